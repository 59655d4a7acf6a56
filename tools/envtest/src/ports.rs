//! Free loopback ports for the plane's processes.

use std::net::TcpListener;

use crate::Error;

/// `N` distinct ports that were free a moment ago. Another process may take one before ours
/// binds it; starts retry on [`Error::PortInUse`].
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    // Keep all listeners open until every port is chosen so the N ports are distinct.
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for p in &mut ports {
        let l =
            TcpListener::bind("127.0.0.1:0").map_err(Error::io("binding a free loopback port"))?;
        *p = l
            .local_addr()
            .map_err(Error::io("reading a bound port"))?
            .port();
        listeners.push(l);
    }
    Ok(ports)
}
