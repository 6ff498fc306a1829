//! coturn 4.6.1's options that uturn does not implement (from `turnserver --help`,
//! `man turnserver` and the packaged turnserver.conf), each classified: ignored with a
//! warning when ignoring it cannot weaken what the operator asked for, refused otherwise.
//! Options uturn implements are in [`super::table::UTURN`].

use super::table::{Arity, Effect, Initial, Opt};

const fn ignored(name: &'static str, short: Option<char>, arity: Arity, why: &'static str) -> Opt {
    Opt {
        name,
        short,
        arity,
        meta: if matches!(arity, Arity::Flag) {
            ""
        } else {
            "V"
        },
        initial: Initial::Note("–"),
        help: why,
        effect: Effect::Ignored(why),
    }
}

const fn refused(name: &'static str, short: Option<char>, arity: Arity, why: &'static str) -> Opt {
    Opt {
        name,
        short,
        arity,
        meta: if matches!(arity, Arity::Flag) {
            ""
        } else {
            "V"
        },
        initial: Initial::Note("–"),
        help: why,
        effect: Effect::Refused(why),
    }
}

use Arity::{Flag, Value};

const NO_CLI: &str = "uturn has no admin CLI, so none listens";
const NO_WEB: &str = "uturn has no web admin, so none listens";
const LOGS: &str = "uturn logs to stdout (see --log-level)";
const RUSTLS: &str =
    "uturn's TLS is rustls: only TLS 1.2/1.3 with AEAD, forward-secret suites; no DHE";
const USERDB: &str =
    "uturn reads no such database: its users are unknown, so they are refused, never let in";
const NO_DYNAMIC: &str = "uturn has no database-driven lists or realms, which is what this asks";

pub(crate) const COTURN: &[Opt] = &[
    // Listeners and addresses.
    refused("listening-device", Some('d'), Value, "binding to a device restricts where uturn listens; ignoring it would listen on every interface: use --listening-ip"),
    refused("relay-device", Some('i'), Value, "binding relays to a device restricts where traffic leaves; use --relay-ip"),
    ignored("alt-listening-port", None, Value, "RFC 5780 NAT discovery, which uturn does not offer (fewer open ports)"),
    ignored("alt-tls-listening-port", None, Value, "RFC 5780 NAT discovery, which uturn does not offer (fewer open ports)"),
    ignored("tcp-proxy-port", None, Value, "no PROXY-protocol listener is opened (fewer open ports)"),
    ignored("aux-server", None, Value, "no auxiliary listener is opened (fewer open ports)"),
    ignored("udp-self-balance", None, Flag, "uturn balances over SO_REUSEPORT shards instead"),
    ignored("relay-threads", Some('m'), Value, "uturn runs one shard per core (see --cores)"),
    ignored("ne", None, Value, "coturn-internal network engine choice"),
    ignored("no-rfc5780", None, Flag, "uturn never offers RFC 5780 NAT discovery, which is what this asks"),
    ignored("no-stun-backward-compatibility", None, Flag, "uturn never sends MAPPED-ADDRESS nor answers RFC 3489 requests, which is what this asks"),
    ignored("response-origin-only-with-rfc5780", None, Flag, "uturn never sends RESPONSE-ORIGIN"),
    ignored("allocation-default-address-family", Some('A'), Value, "uturn follows RFC 6156: IPv4 unless the client asks"),
    ignored("keep-address-family", Some('K'), Flag, "deprecated in coturn; uturn follows RFC 6156"),
    ignored("mobility", None, Flag, "ICE mobility (MICE) is not offered; clients fall back to a new allocation"),
    ignored("tls-alternate-server", None, Value, "TLS clients are not redirected; nothing is opened"),
    refused("no-udp-relay", None, Flag, "uturn relays only over UDP; ignoring this would allow exactly what it forbids"),
    ignored("no-tcp-relay", None, Flag, "uturn has no TCP relays (RFC 6062), which is what this asks"),
    refused("stun-only", Some('S'), Flag, "ignoring it would offer TURN relaying the operator did not want"),
    refused("no-stun", None, Flag, "uturn answers STUN Binding requests; ignoring this would answer what the operator wanted unanswered"),
    refused("server-relay", None, Flag, "disables permission checks; uturn does not, and an application relying on it would break silently"),
    // Authentication.
    refused("no-auth", Some('z'), Flag, "uturn always requires credentials (an anonymous relay is an open proxy); remove it and give --user or --use-auth-secret"),
    refused("check-origin-consistency", None, Flag, "uturn does not check ORIGIN; ignoring it would drop a check that was asked for"),
    refused("secure-stun", None, Flag, "uturn answers Binding requests without authentication; ignoring this would drop a check that was asked for"),
    ignored("server-name", None, Value, "only used by oAuth, which uturn does not offer"),
    ignored("oauth", None, Flag, "oAuth tokens are not accepted, so such clients are refused, never let in"),
    ignored("rest-api-separator", Some('C'), Value, "uturn splits TURN REST usernames at ':'; other spellings fail authentication, never pass it"),
    ignored("no-auth-pings", None, Flag, NO_DYNAMIC),
    ignored("no-dynamic-ip-list", None, Flag, NO_DYNAMIC),
    ignored("no-dynamic-realms", None, Flag, NO_DYNAMIC),
    ignored("db", Some('b'), Value, USERDB),
    ignored("userdb", None, Value, USERDB),
    ignored("psql-userdb", Some('e'), Value, USERDB),
    ignored("sql-userdb", None, Value, USERDB),
    ignored("mysql-userdb", Some('M'), Value, USERDB),
    ignored("mongo-userdb", Some('J'), Value, USERDB),
    ignored("secret-key-file", None, Value, "only used with a MySQL user database"),
    ignored("fingerprint", Some('f'), Flag, "FINGERPRINT is always answered in kind"),
    // Limits.
    refused("bps-capacity", Some('B'), Value, "uturn has no server-wide bandwidth cap; ignoring it would drop a limit that was asked for (use --max-bps per allocation)"),
    ignored("max-allocate-timeout", None, Value, "uturn keeps no half-established allocations: an Allocate is answered at once"),
    ignored("no-multicast-peers", None, Flag, "multicast peers are always refused"),
    // TLS.
    refused("pkey-pwd", None, Value, "encrypted private keys are not supported: give --pkey an unencrypted key readable only by uturn"),
    refused("CA-file", None, Value, "client certificates are not checked; ignoring this would let in clients it should refuse"),
    ignored("cipher-list", None, Value, RUSTLS),
    ignored("ec-curve-name", None, Value, RUSTLS),
    ignored("dh566", None, Flag, RUSTLS),
    ignored("dh1066", None, Flag, RUSTLS),
    ignored("dh-file", None, Value, RUSTLS),
    ignored("no-tlsv1", None, Flag, "uturn never offers TLS 1.0"),
    ignored("no-tlsv1_1", None, Flag, "uturn never offers TLS 1.1"),
    refused("no-tlsv1_2", None, Flag, "uturn's TLS offers TLS 1.2; ignoring this would allow what it forbids"),
    // Process and logging.
    refused("proc-user", None, Value, "uturn does not change its user; ignoring this would keep it running as root: use systemd's User= (tuning/)"),
    refused("proc-group", None, Value, "uturn does not change its group; ignoring this would keep root's group: use systemd's Group="),
    ignored("daemon", Some('o'), Flag, "uturn runs in the foreground under a service manager"),
    ignored("pidfile", None, Value, "uturn writes no pid file; a service manager tracks it"),
    ignored("n", Some('n'), Flag, "uturn reads a config file only when -c names one"),
    ignored("verbose", Some('v'), Flag, LOGS),
    ignored("Verbose", Some('V'), Flag, LOGS),
    ignored("log-file", Some('l'), Value, LOGS),
    ignored("no-stdout-log", None, Flag, LOGS),
    ignored("syslog", None, Flag, LOGS),
    ignored("syslog-facility", None, Value, LOGS),
    ignored("simple-log", None, Flag, LOGS),
    ignored("new-log-timestamp", None, Flag, LOGS),
    ignored("new-log-timestamp-format", None, Value, LOGS),
    ignored("log-binding", None, Flag, "uturn logs no per-request lines (counters instead)"),
    ignored("acme-redirect", None, Value, "uturn answers no HTTP"),
    ignored("prometheus-username-labels", None, Flag, "uturn's metrics carry no per-user labels"),
    // Admin interfaces.
    ignored("no-cli", None, Flag, NO_CLI),
    ignored("cli-ip", None, Value, NO_CLI),
    ignored("cli-port", None, Value, NO_CLI),
    ignored("cli-password", None, Value, NO_CLI),
    ignored("cli-max-output-sessions", None, Value, NO_CLI),
    ignored("web-admin", None, Flag, NO_WEB),
    ignored("web-admin-ip", None, Value, NO_WEB),
    ignored("web-admin-port", None, Value, NO_WEB),
    ignored("web-admin-listen-on-workers", None, Flag, NO_WEB),
];
