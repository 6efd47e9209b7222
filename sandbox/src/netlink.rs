//! The little rtnetlink a sandbox needs, synchronous: links up, a veth pair
//! with one end in another network namespace, addresses, routes, deletion.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::profile::{Cidr, Destination};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("{what}: {source}")]
    Request { what: String, source: io::Error },
    #[error("{what}: unexpected netlink reply: {reply}")]
    Protocol { what: String, reply: String },
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// A route netlink socket in the calling thread's network namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends one request and collects the replies until the ACK (or the end of
    /// a dump).
    fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(|e| NetlinkError::Request {
            what: what.to_string(),
            source: e,
        })?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .map_err(|e| NetlinkError::Request {
                    what: what.to_string(),
                    source: e,
                })?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| NetlinkError::Protocol {
                        what: what.to_string(),
                        reply: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number != self.seq {
                    off += len.max(16);
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(out),
                        Some(code) => {
                            return Err(NetlinkError::Request {
                                what: what.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            })
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    other => {
                        return Err(NetlinkError::Protocol {
                            what: what.to_string(),
                            reply: format!("{other:?}"),
                        })
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// The index of interface `name`, or None when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("look up interface {name}"),
            RouteNetlinkMessage::GetLink(m),
            NLM_F_ACK,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(NetlinkError::Request { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn require_index(&mut self, name: &str) -> Result<u32> {
        self.link_index(name)?.ok_or_else(|| NetlinkError::Request {
            what: format!("interface {name}"),
            source: io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    /// Sets interface `name` up.
    pub fn set_up(&mut self, name: &str) -> Result<()> {
        let index = self.require_index(name)?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(
            &format!("set interface {name} up"),
            RouteNetlinkMessage::SetLink(m),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Creates a veth pair: `host_name` here, `peer_name` directly in the
    /// network namespace of process `peer_netns_pid`.
    pub fn create_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_netns_pid: i32,
    ) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes
            .push(LinkAttribute::NetNsPid(peer_netns_pid as u32));
        let mut m = LinkMessage::default();
        m.attributes
            .push(LinkAttribute::IfName(host_name.to_string()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            &format!("create veth pair {host_name} / {peer_name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Deletes interface `name` (for a veth, both ends). Absent is fine.
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let Some(index) = self.link_index(name)? else {
            return Ok(());
        };
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(
            &format!("delete interface {name}"),
            RouteNetlinkMessage::DelLink(m),
            NLM_F_ACK,
        ) {
            Err(NetlinkError::Request { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(())
            }
            r => r.map(|_| ()),
        }
    }

    /// Adds an address to interface `name`.
    pub fn add_address(&mut self, name: &str, cidr: Cidr) -> Result<()> {
        let index = self.require_index(name)?;
        let mut m = AddressMessage::default();
        m.header.family = family(cidr.addr);
        m.header.prefix_len = cidr.prefix;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        m.attributes.push(AddressAttribute::Local(cidr.addr));
        m.attributes.push(AddressAttribute::Address(cidr.addr));
        self.request(
            &format!("add address {cidr} to {name}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Adds a route over interface `name`.
    pub fn add_route(
        &mut self,
        name: &str,
        dest: Destination,
        gateway: Option<IpAddr>,
        v4: bool,
    ) -> Result<()> {
        let index = self.require_index(name)?;
        let mut m = RouteMessage::default();
        let (fam, len, dst) = match dest {
            Destination::Default => (
                if v4 {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                },
                0,
                None,
            ),
            Destination::Net(c) => (family(c.addr), c.prefix, Some(c.addr)),
        };
        m.header = RouteHeader {
            address_family: fam,
            destination_prefix_length: len,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: if gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            ..Default::default()
        };
        if let Some(d) = dst {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(d)));
        }
        if let Some(g) = gateway {
            m.attributes.push(RouteAttribute::Gateway(route_addr(g)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        let shown = match dest {
            Destination::Default => "default".to_string(),
            Destination::Net(c) => c.to_string(),
        };
        self.request(
            &format!(
                "add route {shown}{} dev {name}",
                gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            ),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Names of all interfaces in this namespace.
    pub fn link_names(&mut self) -> Result<Vec<String>> {
        let m = LinkMessage::default();
        let replies = self.request(
            "list interfaces",
            RouteNetlinkMessage::GetLink(m),
            netlink_packet_core::NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_addr(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    }
}
