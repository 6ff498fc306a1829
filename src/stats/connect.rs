//! Opening a blocking Redis connection for a [`RedisTarget`] (`--redis-statsdb`,
//! `--redis-userdb`), shared by the side threads that talk to Redis.
//!
//! Must not: be called from a shard (it blocks for up to the connect timeout).

use crate::config::RedisTarget;
use std::time::Duration;

/// Read/write timeout of an established connection: a stalled Redis makes a side thread
/// give up the connection and reconnect, instead of waiting forever.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects (bounded by the target's `connect_timeout`, 1–30 s) and sets I/O timeouts.
pub fn connect(target: &RedisTarget) -> redis::RedisResult<redis::Connection> {
    let mut settings = redis::RedisConnectionInfo::default().set_db(target.db);
    if let Some(password) = &target.password {
        settings = settings.set_password(password);
    }
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(
        target.host.clone(),
        target.port,
    ))?
    .set_redis_settings(settings);
    let timeout = Duration::from_secs(target.connect_timeout_secs.clamp(1, 30));
    let conn = redis::Client::open(info)?.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}
