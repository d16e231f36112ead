//! mDNS: advertise this relay as `_outpost._udp.local.` (TXT: node id, mesh
//! tag, protocol) and browse for others with the same tag, dialling each
//! one found. The tag is derived from the secret, never the secret itself.

use super::{dial_loop, Ctx, MeshError};
use crate::model::NodeId;
use crate::tasks::AbortOnDrop;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub const SERVICE: &str = "_outpost._udp.local.";

pub struct Discovery {
    daemon: ServiceDaemon,
    node: NodeId,
    tag: String,
}

pub fn start(node: NodeId, port: u16, tag: String) -> Result<Discovery, MeshError> {
    let daemon = ServiceDaemon::new().map_err(|e| MeshError::Mdns(e.to_string()))?;
    let name = node.to_string();
    let props = [
        ("node", name.as_str()),
        ("tag", tag.as_str()),
        ("proto", "1"),
    ];
    let info = ServiceInfo::new(
        SERVICE,
        &name,
        &format!("outpost-{name}.local."),
        "",
        port,
        &props[..],
    )
    .map_err(|e| MeshError::Mdns(e.to_string()))?
    .enable_addr_auto();
    daemon
        .register(info)
        .map_err(|e| MeshError::Mdns(e.to_string()))?;
    Ok(Discovery { daemon, node, tag })
}

/// Browse until shutdown; one dial loop per discovered relay.
pub async fn run(d: Discovery, ctx: Arc<Ctx>) {
    let events = match d.daemon.browse(SERVICE) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, "mDNS browse failed; discovery is off");
            return;
        }
    };
    // Dropping a handle (peer gone, or this loop ended) ends its dialer.
    let mut dialers: HashMap<NodeId, AbortOnDrop<()>> = HashMap::new();
    let mut stop = ctx.shutdown.clone();
    loop {
        let ev = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            ev = events.recv_async() => match ev { Ok(ev) => ev, Err(_) => break },
        };
        match ev {
            ServiceEvent::ServiceResolved(info) => {
                let Some(node) = info
                    .get_property_val_str("node")
                    .and_then(|n| n.parse::<NodeId>().ok())
                else {
                    continue;
                };
                if node == d.node || info.get_property_val_str("tag") != Some(d.tag.as_str()) {
                    continue;
                }
                dialers.retain(|_, h| !h.is_finished());
                if dialers.contains_key(&node) {
                    continue;
                }
                // Prefer IPv4 (link-local IPv6 needs a scope to dial).
                let Some(ip) = info.get_addresses_v4().into_iter().min() else {
                    continue;
                };
                let target = format!("{ip}:{}", info.get_port());
                ctx.engine.metrics.mesh_discovered.fetch_add(1, Relaxed);
                tracing::info!(%node, %target, "mDNS: found a relay of this mesh");
                dialers.insert(
                    node,
                    AbortOnDrop::spawn(dial_loop(ctx.clone(), target, Some(node))),
                );
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let node = fullname
                    .split('.')
                    .next()
                    .and_then(|n| n.parse::<NodeId>().ok());
                if node.and_then(|n| dialers.remove(&n)).is_some() {
                    ctx.engine.metrics.mesh_lost.fetch_add(1, Relaxed);
                    tracing::info!(?node, "mDNS: relay went away");
                }
            }
            _ => {}
        }
    }
    // The dialers follow the shutdown signal too (their sessions say
    // goodbye): wait for them.
    for (_, h) in dialers {
        let _ = h.await;
    }
    if let Ok(rx) = d.daemon.shutdown() {
        let _ = rx.recv_async().await;
    }
}
