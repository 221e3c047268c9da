//! The protobuf wire format of gossip (`proto/otel_tail/v1/cluster.proto`).
//!
//! Two layers:
//! - [`ProtoCodec`] implements foca's [`Codec`]: headers and members as length-delimited
//!   protobuf messages inside foca's in-memory frame.
//! - [`frame_to_packet`] / [`packet_to_frame`] convert between that frame (header, a
//!   `u16` count of members, `u16`-length-prefixed custom broadcasts) and one
//!   [`pb::GossipPacket`] message, so that what goes on the wire is protobuf
//!   throughout, foca's framing included.

use std::{net::SocketAddr, sync::Arc};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Incarnation, Member, Message, ProbeNumber, State};
use otel_tail_proto::v1 as pb;
use prost::Message as _;

use super::identity::{GossipIdentity, Role};

/// Longest node id accepted on the wire or in config. Kubernetes pod names are at most
/// 63 characters; the bound keeps identities small enough for 1400-byte packets.
pub const MAX_NODE_ID_LEN: usize = 128;

/// Why a gossip message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("protobuf decode failed: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("protobuf encode failed: {0}")]
    Encode(#[from] prost::EncodeError),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("invalid node identity: {0}")]
    Identity(&'static str),
    #[error("invalid gossip address {0:?}")]
    Address(String),
    #[error("unknown enum value {value} in `{field}`")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("`{field}` value {value} is out of range")]
    OutOfRange { field: &'static str, value: u32 },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("message kind `{0}` carries no piggybacked data, but some was found")]
    UnexpectedPiggyback(&'static str),
    #[error("too many items for one packet: {0}")]
    TooMany(usize),
    #[error("empty custom broadcast")]
    EmptyBroadcast,
}

/// foca's [`Codec`] over the protobuf messages of `cluster.proto`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ProtoCodec;

impl Codec<GossipIdentity> for ProtoCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<GossipIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        // prost checks the remaining capacity before writing, so a failed encode leaves
        // the buffer untouched as foca requires.
        Ok(header_to_proto(header).encode_length_delimited(&mut buf)?)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<GossipIdentity>, CodecError> {
        header_from_proto(pb::Header::decode_length_delimited(&mut buf)?)
    }

    fn encode_member(
        &mut self,
        member: &Member<GossipIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Ok(member_to_proto(member).encode_length_delimited(&mut buf)?)
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<GossipIdentity>, CodecError> {
        member_from_proto(pb::Member::decode_length_delimited(&mut buf)?)
    }
}

/// What follows the header in foca's frame, by message kind.
enum Framing {
    /// A `u16` count of members, the members, then custom broadcasts.
    Piggyback,
    /// Custom broadcasts only (`Broadcast`).
    BroadcastsOnly,
    /// Nothing (`Announce`, `TurnUndead`).
    HeaderOnly(&'static str),
}

fn framing(message: &pb::header::Message) -> Framing {
    use pb::header::Message as M;
    match message {
        M::Broadcast(_) => Framing::BroadcastsOnly,
        M::Announce(_) => Framing::HeaderOnly("announce"),
        M::TurnUndead(_) => Framing::HeaderOnly("turn_undead"),
        M::Ping(_)
        | M::Ack(_)
        | M::PingReq(_)
        | M::IndirectPing(_)
        | M::IndirectAck(_)
        | M::ForwardedAck(_)
        | M::Feed(_)
        | M::Gossip(_) => Framing::Piggyback,
    }
}

/// Converts a frame produced by foca (through [`ProtoCodec`]) into one protobuf packet.
pub(crate) fn frame_to_packet(frame: &[u8]) -> Result<pb::GossipPacket, CodecError> {
    let mut buf = frame;
    let header = pb::Header::decode_length_delimited(&mut buf)?;
    let message = header
        .message
        .as_ref()
        .ok_or(CodecError::Missing("header.message"))?;
    let mut updates = Vec::new();
    let mut broadcasts = Vec::new();
    match framing(message) {
        Framing::Piggyback => {
            if buf.remaining() >= 2 {
                let count = buf.get_u16();
                updates.reserve(usize::from(count));
                for _ in 0..count {
                    updates.push(pb::Member::decode_length_delimited(&mut buf)?);
                }
            }
            read_broadcasts(&mut buf, &mut broadcasts)?;
        }
        Framing::BroadcastsOnly => read_broadcasts(&mut buf, &mut broadcasts)?,
        Framing::HeaderOnly(_) => {}
    }
    if buf.has_remaining() {
        return Err(CodecError::Trailing(buf.remaining()));
    }
    Ok(pb::GossipPacket {
        header: Some(header),
        updates,
        broadcasts,
        sent_at_unix_ms: 0,
    })
}

fn read_broadcasts(buf: &mut &[u8], out: &mut Vec<pb::ClusterBroadcast>) -> Result<(), CodecError> {
    while buf.remaining() > 2 {
        let len = usize::from(buf.get_u16());
        if len == 0 || buf.remaining() < len {
            return Err(CodecError::Trailing(buf.remaining()));
        }
        out.push(pb::ClusterBroadcast::decode(&buf[..len])?);
        buf.advance(len);
    }
    Ok(())
}

/// Converts a received protobuf packet back into the frame foca's `handle_data` reads.
pub(crate) fn packet_to_frame(packet: &pb::GossipPacket) -> Result<Vec<u8>, CodecError> {
    let header = packet
        .header
        .as_ref()
        .ok_or(CodecError::Missing("packet.header"))?;
    let message = header
        .message
        .as_ref()
        .ok_or(CodecError::Missing("header.message"))?;
    let mut frame = Vec::with_capacity(packet.encoded_len() + 8);
    header.encode_length_delimited(&mut frame)?;
    match framing(message) {
        Framing::Piggyback => {
            let count = u16::try_from(packet.updates.len())
                .map_err(|_| CodecError::TooMany(packet.updates.len()))?;
            frame.put_u16(count);
            for member in &packet.updates {
                member.encode_length_delimited(&mut frame)?;
            }
            write_broadcasts(&packet.broadcasts, &mut frame)?;
        }
        Framing::BroadcastsOnly => {
            if !packet.updates.is_empty() {
                return Err(CodecError::UnexpectedPiggyback("broadcast"));
            }
            write_broadcasts(&packet.broadcasts, &mut frame)?;
        }
        Framing::HeaderOnly(kind) => {
            if !packet.updates.is_empty() || !packet.broadcasts.is_empty() {
                return Err(CodecError::UnexpectedPiggyback(kind));
            }
        }
    }
    Ok(frame)
}

fn write_broadcasts(
    broadcasts: &[pb::ClusterBroadcast],
    frame: &mut Vec<u8>,
) -> Result<(), CodecError> {
    for broadcast in broadcasts {
        let len = broadcast.encoded_len();
        if len == 0 {
            return Err(CodecError::EmptyBroadcast);
        }
        frame.put_u16(u16::try_from(len).map_err(|_| CodecError::TooMany(len))?);
        broadcast.encode(frame)?;
    }
    Ok(())
}

fn identity_to_proto(id: &GossipIdentity) -> pb::NodeIdentity {
    pb::NodeIdentity {
        node_id: id.node_id().to_string(),
        address: id.address().to_string(),
        role: match id.role() {
            None => pb::Role::Unspecified,
            Some(Role::Router) => pb::Role::Router,
            Some(Role::Sampler) => pb::Role::Sampler,
        } as i32,
        generation: id.generation(),
        forward: id.forward().map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// Decodes any identity, seed placeholders included (valid only as a header's `dst`).
fn any_identity_from_proto(
    id: Option<pb::NodeIdentity>,
    field: &'static str,
) -> Result<GossipIdentity, CodecError> {
    let id = id.ok_or(CodecError::Missing(field))?;
    if id.node_id.len() > MAX_NODE_ID_LEN {
        return Err(CodecError::Identity("node id too long"));
    }
    let address: SocketAddr = id
        .address
        .parse()
        .map_err(|_| CodecError::Address(id.address.clone()))?;
    let role = match pb::Role::try_from(id.role) {
        Ok(pb::Role::Unspecified) => None,
        Ok(pb::Role::Router) => Some(Role::Router),
        Ok(pb::Role::Sampler) => Some(Role::Sampler),
        Err(_) => {
            return Err(CodecError::UnknownEnum {
                field: "role",
                value: id.role,
            });
        }
    };
    let forward = if id.forward.is_empty() {
        None
    } else {
        Some(
            id.forward
                .parse::<SocketAddr>()
                .map_err(|_| CodecError::Address(id.forward.clone()))?,
        )
    };
    GossipIdentity::from_parts(Arc::from(id.node_id), address, role, id.generation)
        .map(|identity| identity.with_forward(forward))
        .ok_or(CodecError::Identity("needs both a node id and a role"))
}

/// Decodes the identity of a real node; seed placeholders are rejected.
fn node_identity_from_proto(
    id: Option<pb::NodeIdentity>,
    field: &'static str,
) -> Result<GossipIdentity, CodecError> {
    let id = any_identity_from_proto(id, field)?;
    if id.is_seed() {
        return Err(CodecError::Identity(
            "seed placeholder where a node is required",
        ));
    }
    Ok(id)
}

fn probe_number(value: u32, field: &'static str) -> Result<ProbeNumber, CodecError> {
    ProbeNumber::try_from(value).map_err(|_| CodecError::OutOfRange { field, value })
}

fn incarnation(value: u32, field: &'static str) -> Result<Incarnation, CodecError> {
    Incarnation::try_from(value).map_err(|_| CodecError::OutOfRange { field, value })
}

fn header_to_proto(header: &Header<GossipIdentity>) -> pb::Header {
    use pb::header::Message as M;
    let message = match &header.message {
        Message::Ping(n) => M::Ping(pb::Ping {
            probe_number: (*n).into(),
        }),
        Message::Ack(n) => M::Ack(pb::Ack {
            probe_number: (*n).into(),
        }),
        Message::PingReq {
            target,
            probe_number,
        } => M::PingReq(pb::PingReq {
            target: Some(identity_to_proto(target)),
            probe_number: (*probe_number).into(),
        }),
        Message::IndirectPing {
            origin,
            probe_number,
        } => M::IndirectPing(pb::IndirectPing {
            origin: Some(identity_to_proto(origin)),
            probe_number: (*probe_number).into(),
        }),
        Message::IndirectAck {
            target,
            probe_number,
        } => M::IndirectAck(pb::IndirectAck {
            target: Some(identity_to_proto(target)),
            probe_number: (*probe_number).into(),
        }),
        Message::ForwardedAck {
            origin,
            probe_number,
        } => M::ForwardedAck(pb::ForwardedAck {
            origin: Some(identity_to_proto(origin)),
            probe_number: (*probe_number).into(),
        }),
        Message::Announce => M::Announce(pb::Announce {}),
        Message::Feed => M::Feed(pb::Feed {}),
        Message::Gossip => M::Gossip(pb::Gossip {}),
        Message::Broadcast => M::Broadcast(pb::Broadcast {}),
        Message::TurnUndead => M::TurnUndead(pb::TurnUndead {}),
    };
    pb::Header {
        src: Some(identity_to_proto(&header.src)),
        src_incarnation: header.src_incarnation.into(),
        dst: Some(identity_to_proto(&header.dst)),
        message: Some(message),
    }
}

fn header_from_proto(header: pb::Header) -> Result<Header<GossipIdentity>, CodecError> {
    use pb::header::Message as M;
    let message = match header
        .message
        .ok_or(CodecError::Missing("header.message"))?
    {
        M::Ping(m) => Message::Ping(probe_number(m.probe_number, "ping.probe_number")?),
        M::Ack(m) => Message::Ack(probe_number(m.probe_number, "ack.probe_number")?),
        M::PingReq(m) => Message::PingReq {
            target: node_identity_from_proto(m.target, "ping_req.target")?,
            probe_number: probe_number(m.probe_number, "ping_req.probe_number")?,
        },
        M::IndirectPing(m) => Message::IndirectPing {
            origin: node_identity_from_proto(m.origin, "indirect_ping.origin")?,
            probe_number: probe_number(m.probe_number, "indirect_ping.probe_number")?,
        },
        M::IndirectAck(m) => Message::IndirectAck {
            target: node_identity_from_proto(m.target, "indirect_ack.target")?,
            probe_number: probe_number(m.probe_number, "indirect_ack.probe_number")?,
        },
        M::ForwardedAck(m) => Message::ForwardedAck {
            origin: node_identity_from_proto(m.origin, "forwarded_ack.origin")?,
            probe_number: probe_number(m.probe_number, "forwarded_ack.probe_number")?,
        },
        M::Announce(_) => Message::Announce,
        M::Feed(_) => Message::Feed,
        M::Gossip(_) => Message::Gossip,
        M::Broadcast(_) => Message::Broadcast,
        M::TurnUndead(_) => Message::TurnUndead,
    };
    let dst = any_identity_from_proto(header.dst, "header.dst")?;
    if dst.is_seed() && message != Message::Announce {
        return Err(CodecError::Identity(
            "seed placeholder is only valid for announce",
        ));
    }
    Ok(Header {
        src: node_identity_from_proto(header.src, "header.src")?,
        src_incarnation: incarnation(header.src_incarnation, "header.src_incarnation")?,
        dst,
        message,
    })
}

fn member_to_proto(member: &Member<GossipIdentity>) -> pb::Member {
    pb::Member {
        identity: Some(identity_to_proto(member.id())),
        incarnation: member.incarnation().into(),
        state: match member.state() {
            State::Alive => pb::MemberState::Alive,
            State::Suspect => pb::MemberState::Suspect,
            State::Down => pb::MemberState::Down,
        } as i32,
    }
}

fn member_from_proto(member: pb::Member) -> Result<Member<GossipIdentity>, CodecError> {
    let state = match pb::MemberState::try_from(member.state) {
        Ok(pb::MemberState::Alive) => State::Alive,
        Ok(pb::MemberState::Suspect) => State::Suspect,
        Ok(pb::MemberState::Down) => State::Down,
        Ok(pb::MemberState::Unspecified) | Err(_) => {
            return Err(CodecError::UnknownEnum {
                field: "member.state",
                value: member.state,
            });
        }
    };
    Ok(Member::new(
        node_identity_from_proto(member.identity, "member.identity")?,
        incarnation(member.incarnation, "member.incarnation")?,
        state,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, port: u16, role: Role, generation: u64) -> GossipIdentity {
        GossipIdentity::new(
            Arc::from(name),
            SocketAddr::from(([10, 0, 0, 7], port)),
            role,
            generation,
        )
    }

    fn every_message() -> Vec<Message<GossipIdentity>> {
        let other = node("sampler-2", 7946, Role::Sampler, 1_700_000_000_123);
        vec![
            Message::Ping(7),
            Message::Ack(255),
            Message::PingReq {
                target: other.clone(),
                probe_number: 1,
            },
            Message::IndirectPing {
                origin: other.clone(),
                probe_number: 2,
            },
            Message::IndirectAck {
                target: other.clone(),
                probe_number: 3,
            },
            Message::ForwardedAck {
                origin: other,
                probe_number: 4,
            },
            Message::Announce,
            Message::Feed,
            Message::Gossip,
            Message::Broadcast,
            Message::TurnUndead,
        ]
    }

    fn header(message: Message<GossipIdentity>) -> Header<GossipIdentity> {
        Header {
            src: node("router-0", 7946, Role::Router, 42),
            src_incarnation: 65_535,
            dst: node("sampler-1", 7947, Role::Sampler, u64::MAX)
                .with_forward(Some(SocketAddr::from(([10, 0, 0, 8], 4319)))),
            message,
        }
    }

    #[test]
    fn every_header_kind_round_trips() {
        let mut codec = ProtoCodec;
        for message in every_message() {
            let header = header(message);
            let mut buf = Vec::new();
            codec.encode_header(&header, &mut buf).unwrap();
            let mut read = &buf[..];
            let decoded = codec.decode_header(&mut read).unwrap();
            assert_eq!(decoded, header);
            assert!(read.is_empty(), "decode must consume exactly one header");
        }
    }

    #[test]
    fn announce_to_a_seed_placeholder_round_trips_but_nothing_else_does() {
        let mut codec = ProtoCodec;
        let seed = GossipIdentity::seed(SocketAddr::from(([10, 0, 0, 9], 7946)));
        let mut announce = header(Message::Announce);
        announce.dst = seed.clone();
        let mut buf = Vec::new();
        codec.encode_header(&announce, &mut buf).unwrap();
        assert_eq!(codec.decode_header(&buf[..]).unwrap(), announce);

        let mut ping = header(Message::Ping(1));
        ping.dst = seed.clone();
        let mut buf = Vec::new();
        codec.encode_header(&ping, &mut buf).unwrap();
        assert!(matches!(
            codec.decode_header(&buf[..]),
            Err(CodecError::Identity(_))
        ));

        let mut from_seed = header(Message::Gossip);
        from_seed.src = seed;
        let mut buf = Vec::new();
        codec.encode_header(&from_seed, &mut buf).unwrap();
        assert!(matches!(
            codec.decode_header(&buf[..]),
            Err(CodecError::Identity(_))
        ));
    }

    #[test]
    fn forward_address_round_trips_and_must_be_ip_port() {
        let forward = SocketAddr::from(([10, 0, 0, 7], 14319));
        let member = Member::alive(node("s", 1, Role::Sampler, 1).with_forward(Some(forward)));
        let mut proto = member_to_proto(&member);
        assert_eq!(proto.identity.as_ref().unwrap().forward, "10.0.0.7:14319");
        assert_eq!(member_from_proto(proto.clone()).unwrap(), member);
        proto.identity.as_mut().unwrap().forward = "sampler-0.svc:4319".into();
        assert!(matches!(
            member_from_proto(proto),
            Err(CodecError::Address(_))
        ));
    }

    #[test]
    fn every_member_state_round_trips() {
        let mut codec = ProtoCodec;
        for state in [State::Alive, State::Suspect, State::Down] {
            let member = Member::new(node("sampler-0", 1, Role::Sampler, 9), 300, state);
            let mut buf = Vec::new();
            codec.encode_member(&member, &mut buf).unwrap();
            let mut read = &buf[..];
            assert_eq!(codec.decode_member(&mut read).unwrap(), member);
            assert!(read.is_empty());
        }
    }

    #[test]
    fn encode_into_a_full_buffer_fails_without_writing() {
        let mut codec = ProtoCodec;
        let mut storage = Vec::new();
        let mut limited = (&mut storage).limit(10);
        let member = Member::alive(node("sampler-0", 1, Role::Sampler, 9));
        assert!(codec.encode_member(&member, &mut limited).is_err());
        assert!(storage.is_empty());
    }

    #[test]
    fn out_of_range_and_unknown_values_are_rejected() {
        let mut member = member_to_proto(&Member::alive(node("s", 1, Role::Sampler, 1)));
        member.incarnation = 70_000;
        assert!(matches!(
            member_from_proto(member.clone()),
            Err(CodecError::OutOfRange { .. })
        ));
        member.incarnation = 1;
        member.state = 99;
        assert!(matches!(
            member_from_proto(member.clone()),
            Err(CodecError::UnknownEnum { .. })
        ));
        member.state = pb::MemberState::Alive as i32;
        member.identity.as_mut().unwrap().role = 17;
        assert!(matches!(
            member_from_proto(member.clone()),
            Err(CodecError::UnknownEnum { .. })
        ));
        member.identity.as_mut().unwrap().role = pb::Role::Sampler as i32;
        member.identity.as_mut().unwrap().address = "sampler-0.svc:7946".into();
        assert!(matches!(
            member_from_proto(member.clone()),
            Err(CodecError::Address(_))
        ));
        member.identity.as_mut().unwrap().address = "10.0.0.1:7946".into();
        member.identity.as_mut().unwrap().node_id = "x".repeat(MAX_NODE_ID_LEN + 1);
        assert!(matches!(
            member_from_proto(member),
            Err(CodecError::Identity(_))
        ));

        let mut ping = header_to_proto(&header(Message::Ping(1)));
        ping.message = Some(pb::header::Message::Ping(pb::Ping { probe_number: 256 }));
        assert!(matches!(
            header_from_proto(ping.clone()),
            Err(CodecError::OutOfRange { .. })
        ));
        ping.message = None;
        assert!(matches!(
            header_from_proto(ping),
            Err(CodecError::Missing(_))
        ));
    }

    /// Builds a frame the way foca does: header, then per framing the member count,
    /// members and length-prefixed broadcasts.
    fn foca_frame(
        message: Message<GossipIdentity>,
        members: &[Member<GossipIdentity>],
        broadcasts: &[pb::ClusterBroadcast],
    ) -> Vec<u8> {
        let mut codec = ProtoCodec;
        let mut frame = Vec::new();
        let piggyback = !matches!(
            message,
            Message::Announce | Message::TurnUndead | Message::Broadcast
        );
        codec.encode_header(&header(message), &mut frame).unwrap();
        if piggyback {
            frame.put_u16(members.len() as u16);
            for member in members {
                codec.encode_member(member, &mut frame).unwrap();
            }
        }
        for broadcast in broadcasts {
            frame.put_u16(broadcast.encoded_len() as u16);
            broadcast.encode(&mut frame).unwrap();
        }
        frame
    }

    #[test]
    fn frames_convert_to_packets_and_back_for_every_kind() {
        let members = vec![
            Member::new(node("a", 1, Role::Sampler, 1), 0, State::Alive),
            Member::new(node("b", 2, Role::Router, 2), 5, State::Suspect),
            Member::new(node("c", 3, Role::Sampler, 3), 9, State::Down),
        ];
        let broadcasts = vec![pb::ClusterBroadcast {
            origin: "a".into(),
            origin_generation: 1,
            sequence: 1,
            payload: b"decision".to_vec(),
        }];
        for message in every_message() {
            let (members, broadcasts): (&[_], &[_]) = match message {
                Message::Announce | Message::TurnUndead => (&[], &[]),
                Message::Broadcast => (&[], &broadcasts),
                _ => (&members, &broadcasts),
            };
            let frame = foca_frame(message.clone(), members, broadcasts);
            let packet = frame_to_packet(&frame).unwrap();
            assert_eq!(packet.updates.len(), members.len(), "{message:?}");
            assert_eq!(packet.broadcasts, broadcasts, "{message:?}");
            let wire = packet.encode_to_vec();
            let received = pb::GossipPacket::decode(&wire[..]).unwrap();
            assert_eq!(packet_to_frame(&received).unwrap(), frame, "{message:?}");
        }
    }

    #[test]
    fn a_piggyback_frame_without_updates_converts() {
        let mut frame = Vec::new();
        ProtoCodec
            .encode_header(&header(Message::Ping(3)), &mut frame)
            .unwrap();
        let packet = frame_to_packet(&frame).unwrap();
        assert!(packet.updates.is_empty() && packet.broadcasts.is_empty());
        let back = packet_to_frame(&packet).unwrap();
        assert_eq!(
            ProtoCodec.decode_header(&back[..]).unwrap(),
            header(Message::Ping(3))
        );
    }

    #[test]
    fn packets_with_data_a_kind_cannot_carry_are_rejected() {
        let member = member_to_proto(&Member::alive(node("a", 1, Role::Sampler, 1)));
        let packet = pb::GossipPacket {
            header: Some(header_to_proto(&header(Message::Announce))),
            updates: vec![member.clone()],
            broadcasts: vec![],
            sent_at_unix_ms: 0,
        };
        assert!(matches!(
            packet_to_frame(&packet),
            Err(CodecError::UnexpectedPiggyback(_))
        ));
        let packet = pb::GossipPacket {
            header: Some(header_to_proto(&header(Message::Broadcast))),
            updates: vec![member],
            broadcasts: vec![],
            sent_at_unix_ms: 0,
        };
        assert!(matches!(
            packet_to_frame(&packet),
            Err(CodecError::UnexpectedPiggyback(_))
        ));
        let packet = pb::GossipPacket {
            header: Some(header_to_proto(&header(Message::Gossip))),
            updates: vec![],
            broadcasts: vec![pb::ClusterBroadcast::default()],
            sent_at_unix_ms: 0,
        };
        assert!(matches!(
            packet_to_frame(&packet),
            Err(CodecError::EmptyBroadcast)
        ));
        assert!(matches!(
            packet_to_frame(&pb::GossipPacket::default()),
            Err(CodecError::Missing(_))
        ));
    }

    #[test]
    fn truncated_and_padded_frames_are_rejected() {
        let members = vec![Member::alive(node("a", 1, Role::Sampler, 1))];
        let frame = foca_frame(Message::Gossip, &members, &[]);
        let header_only = foca_frame(Message::Gossip, &[], &[]).len() - 2;
        for cut in (1..frame.len()).filter(|&cut| cut != header_only) {
            assert!(frame_to_packet(&frame[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = frame.clone();
        padded.push(0);
        assert!(matches!(
            frame_to_packet(&padded),
            Err(CodecError::Trailing(1))
        ));
    }
}
