//! A service that is down, then up, then down again, on a port fixed in advance: a TCP forwarder on
//! 127.0.0.1:`port` to a real service (anvil, Postgres). While it is down nothing listens on the port
//! (connections are refused, as with a node not started yet); taking it down also cuts the connections it
//! carries, as a node that dies does.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

/// The forwarder; down when created.
#[derive(Debug)]
pub struct Outage {
    port: u16,
    upstream: SocketAddr,
    forwarding: Option<tokio::task::JoinHandle<()>>,
}

impl Outage {
    /// A forwarder from 127.0.0.1:`port` (nothing listens there yet) to `upstream`.
    pub fn new(port: u16, upstream: SocketAddr) -> Self {
        Self { port, upstream, forwarding: None }
    }

    /// A free port on 127.0.0.1 (free when asked; nothing listens on it afterwards).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts listening on the port and forwarding every connection to the upstream.
    pub async fn up(&mut self) {
        assert!(self.forwarding.is_none(), "already up");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("bind the outage port");
        let upstream = self.upstream;
        self.forwarding = Some(tokio::spawn(async move {
            // Dropped with this task, the set aborts every connection it carries.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }));
    }

    /// Stops listening and cuts every open connection.
    pub async fn down(&mut self) {
        if let Some(forwarding) = self.forwarding.take() {
            forwarding.abort();
            let _ = forwarding.await;
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(forwarding) = self.forwarding.take() {
            forwarding.abort();
        }
    }
}
