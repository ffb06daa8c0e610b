//! Telling systemd how a `Type=notify` service is doing: `READY=1` once it serves, `STATUS=...`
//! for `systemctl status`, `STOPPING=1` when it shuts down. The service manager passes a unix
//! datagram socket in `$NOTIFY_SOCKET` (a path, or an abstract name written `@name`); each message
//! is one datagram of `KEY=value` lines (sd_notify(3)). Without `$NOTIFY_SOCKET` (not started by
//! systemd, or by a unit of another type) every call does nothing.
//!
//! Written with std only: the protocol is one `sendto`, not worth a dependency.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1"`, or several `KEY=value` lines) to the socket named by
/// `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset or empty (nothing to tell).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// [`notify`], logging a failure as a WARN instead of returning it: a service manager that cannot
/// be told is no reason to stop serving (systemd then times the start out and says so).
pub fn notify_or_warn(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "could not notify the service manager ($NOTIFY_SOCKET)");
    }
}

/// Sends `state` to the notification socket `socket`: a filesystem path, or `@name` for an
/// abstract socket (Linux).
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let addr = socket_addr(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::other(format!("sent {sent} of {} bytes to {}", state.len(), socket.to_string_lossy())));
    }
    Ok(())
}

fn socket_addr(socket: &OsStr) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'@') => abstract_addr(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{NOTIFY_SOCKET}={} is neither an absolute path nor @name", socket.to_string_lossy()),
        )),
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract unix sockets exist on Linux only"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a datagram arrives");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn a_message_reaches_a_socket_named_by_path_or_abstract_name() {
        let dir = std::env::temp_dir().join(format!("fifty-sd-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=serving");

        let name = format!("fifty-sd-notify-test-{}", std::process::id());
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap()
        };
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(receive(&abstract_listener), "STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_or_absent_socket_is_an_error_naming_it() {
        let err = notify_to(OsStr::new("relative/notify.sock"), "READY=1").unwrap_err().to_string();
        assert!(err.contains("NOTIFY_SOCKET=relative/notify.sock"), "{err}");
        let missing = std::env::temp_dir().join(format!("fifty-no-such-socket-{}", std::process::id()));
        assert!(notify_to(missing.as_os_str(), "READY=1").is_err());
    }
}
