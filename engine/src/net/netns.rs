//! The sandbox's network namespace: its links, addresses and routes are
//! made by the sandbox from the profile before any socket. The image records
//! them (`net.json`) so that a restore can check that the new namespace has
//! every address it had, and that the profile still gives every address a
//! socket is bound to.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::diag::{self, Link};
use crate::error::{Error, Result};
use crate::image::SocketImage;

/// `net.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetnsImage {
    pub links: Vec<Link>,
    pub routes: Vec<String>,
}

/// Reads the links, addresses and routes of process `pid`'s namespace.
pub fn collect(pid: i32) -> Result<NetnsImage> {
    let mut nl = diag::in_netns(pid, diag::Netlink::route)?;
    let links = diag::links(&mut nl)?;
    let routes = diag::routes(&mut nl, &links)?;
    Ok(NetnsImage { links, routes })
}

/// Addresses that are not the sandbox's own: IPv6 link-local ones are made
/// by the kernel from a MAC address that is new in every sandbox.
fn carried(addr: &str) -> bool {
    !addr.to_ascii_lowercase().starts_with("fe80:")
}

fn bound_ip(s: &SocketImage) -> Option<(IpAddr, String)> {
    let l = s.inet.as_ref()?.local.as_ref()?;
    let a: SocketAddr = l.parse().ok()?;
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    (!ip.is_unspecified()).then(|| (ip, l.clone()))
}

/// Run in the new sandbox's namespace before any socket is made: every
/// address the dumped namespace had is there again, on the same link.
pub fn check(img: &NetnsImage, sockets: &[SocketImage]) -> Result<()> {
    let mut nl = diag::Netlink::route()?;
    let now = diag::links(&mut nl)?;
    for l in &img.links {
        let here = now.iter().find(|n| n.name == l.name);
        for a in l.addresses.iter().filter(|a| carried(a)) {
            if !here.is_some_and(|n| n.addresses.contains(a)) {
                return Err(Error::Other(format!(
                    "the restored sandbox's network lacks address {a} on {} (it has: {})",
                    l.name,
                    describe(&now)
                )));
            }
        }
    }
    for s in sockets {
        let Some((ip, shown)) = bound_ip(s) else {
            continue;
        };
        let present = ip.is_loopback()
            || now
                .iter()
                .flat_map(|n| n.addresses.iter())
                .any(|a| a.split('/').next().and_then(|x| x.parse::<IpAddr>().ok()) == Some(ip));
        if !present {
            return Err(Error::Other(format!(
                "socket {} is bound to {shown}, an address the restored sandbox's network does not have (it has: {})",
                s.id,
                describe(&now)
            )));
        }
    }
    Ok(())
}

fn describe(links: &[Link]) -> String {
    links
        .iter()
        .map(|l| format!("{} {}", l.name, l.addresses.join(" ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Before anything is made: the profile the sandbox will be built from gives
/// every specific address a socket is bound to.
pub fn check_profile(profile: &sandbox::Profile, sockets: &[SocketImage]) -> Result<()> {
    let veth = profile.network.veth.as_ref().map(|v| v.address.addr);
    for s in sockets {
        let Some((ip, shown)) = bound_ip(s) else {
            continue;
        };
        let ok = (ip.is_loopback() && profile.network.loopback) || Some(ip) == veth;
        if !ok {
            return Err(Error::Other(format!(
                "socket {} is bound to {shown}, but the image's profile gives the sandbox {}",
                s.id,
                match (veth, profile.network.loopback) {
                    (Some(v), true) => format!("only the loopback addresses and {v}"),
                    (Some(v), false) => format!("only {v}"),
                    (None, true) => "only the loopback addresses".to_string(),
                    (None, false) => "no address".to_string(),
                }
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::InetSocketImage;

    fn bound(id: u32, local: &str) -> SocketImage {
        SocketImage {
            id,
            ino: 0,
            family: libc::AF_INET,
            sock_type: libc::SOCK_STREAM,
            protocol: libc::IPPROTO_TCP,
            state: 10,
            shutdown: 0,
            opts: Default::default(),
            unix: None,
            inet: Some(InetSocketImage {
                local: Some(local.into()),
                ..Default::default()
            }),
            netlink: None,
        }
    }

    #[test]
    fn profile_must_give_bound_addresses() {
        let mut p = sandbox::Profile::default();
        let socks = [
            bound(0, "0.0.0.0:80"),
            bound(1, "127.0.0.1:81"),
            bound(2, "[::1]:82"),
        ];
        check_profile(&p, &socks).unwrap();
        let veth = [bound(0, "10.9.8.2:80")];
        let err = check_profile(&p, &veth).unwrap_err().to_string();
        assert!(
            err.contains("10.9.8.2:80") && err.contains("only the loopback"),
            "{err}"
        );
        p.network.veth = Some(
            serde_json::from_value::<sandbox::profile::Veth>(serde_json::json!({
                "address": "10.9.8.2/30"
            }))
            .unwrap(),
        );
        check_profile(&p, &veth).unwrap();
        let other = [bound(0, "10.9.8.3:80")];
        let err = check_profile(&p, &other).unwrap_err().to_string();
        assert!(
            err.contains("10.9.8.3:80") && err.contains("10.9.8.2"),
            "{err}"
        );
    }
}
