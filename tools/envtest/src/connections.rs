//! Counting a process's established TCP connections to a local port, from `/proc` (Linux only):
//! how a test or the benchmark sees how many connections a program keeps to the API server.

use std::collections::HashSet;

/// Established TCP connections (IPv4 and IPv6) of process `pid` to local port `port`: the
/// sockets among its open file descriptors, matched by inode in `/proc/<pid>/net/tcp{,6}`.
/// 0 when the process or its tables cannot be read.
pub(crate) fn established_to(pid: u32, port: u16) -> usize {
    let inodes = socket_inodes(pid);
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 01 is ESTABLISHED.
            if f[3] == "01" && remote_port == Some(port) && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}

/// Inodes of the sockets among `pid`'s open file descriptors (`socket:[INODE]` links).
fn socket_inodes(pid: u32) -> HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_this_process_holds_is_counted_and_closing_it_uncounts_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = std::process::id();
        assert_eq!(established_to(me, port), 0);
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (_server_side, _) = listener.accept().expect("accept");
        assert_eq!(
            established_to(me, port),
            1,
            "the client side's remote port is {port}"
        );
        drop(client);
        assert_eq!(established_to(me, port), 0);
    }
}
