//! A private `redis-server` on a free loopback port, for the fleet scenario
//! that shares a Redis cache tier. Stopped when dropped.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

pub(crate) struct RedisServer {
    child: Child,
    pub(crate) url: String,
}

impl RedisServer {
    /// Starts `redis-server` (Debian package `redis-server`) without
    /// persistence on a free port of 127.0.0.1.
    pub(crate) fn start() -> Result<Self, String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server ({e}); install it with `apt-get install redis-server`")
            })?;
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        for _ in 0..50 {
            if ping(addr) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("redis-server did not answer PING within 5 s".to_owned())
    }
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
