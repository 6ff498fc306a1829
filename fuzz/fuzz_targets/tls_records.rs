//! Any bytes from a client, cut into receives at points the input chooses, through the
//! server's TLS record layer (rustls's unbuffered API and uturn's buffering around it): no
//! panic; the bytes held unprocessed stay under the bound (two records); no frame is handed
//! on before a handshake has finished (which a client that never saw this server's answers
//! cannot finish); and a different cut ends the same way (closed or not).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use uturn::shard::tls::Certificates;
use uturn::testing::tls::{make_cert, TlsRecords, TLS_PENDING_MAX};

fn config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("uturn-fuzz-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            make_cert(&cert, &key, "localhost");
            let config = Certificates::load(&cert, &key).unwrap().server_config();
            let _ = std::fs::remove_dir_all(&dir);
            config
        })
        .clone()
}

/// Feeds `stream` in pieces of `step` bytes (all at once for 0); whether the connection
/// is still open at the end.
fn feed(stream: &[u8], step: usize) -> bool {
    let mut conn = TlsRecords::new(config());
    let pieces: Vec<&[u8]> = match step {
        0 => vec![stream],
        n => stream.chunks(n).collect(),
    };
    for piece in pieces {
        let open = conn.push(piece);
        assert!(
            conn.established() || conn.frames_out == 0,
            "a frame before the handshake finished"
        );
        if !open {
            return false;
        }
        assert!(
            conn.pending() < TLS_PENDING_MAX,
            "unprocessed bytes past the bound"
        );
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(seed % 61) + 1;
    assert_eq!(
        feed(stream, step),
        feed(stream, 0),
        "the cut changed the outcome"
    );
});
