package nat

import (
	"encoding/binary"
	"net/netip"

	"holdfast/internal/wire"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Offsets inside an ICMPv4 error: 8 bytes of ICMP header, then the quoted IP
// header of the packet that caused it, then at least 8 bytes of its transport
// header (RFC 792), which hold the ports for TCP and UDP.
const (
	icmpInnerIP      = header.ICMPv4MinimumSize
	ipChecksumOffset = 10
	ipSrcOffset      = 12
	ipDstOffset      = 16
)

func isICMPError(t header.ICMPv4Type) bool {
	switch t {
	case header.ICMPv4DstUnreachable, header.ICMPv4SrcQuench, header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
		return true
	}
	return false
}

// quoted is the packet quoted by an ICMP error: its IP header offset, header
// length and its (protocol, src, dst) with ports.
type quoted struct {
	proto uint8
	hl    int
	src   netip.AddrPort
	dst   netip.AddrPort
}

// parseQuoted decodes the quoted header of an ICMP error. ok is false if the
// quote is too short to hold the IP header and the ports, or is not TCP/UDP.
func parseQuoted(icmp []byte) (q quoted, ok bool) {
	in := icmp[icmpInnerIP:]
	if len(in) < header.IPv4MinimumSize || header.IPVersion(in) != header.IPv4Version {
		return q, false
	}
	ip := header.IPv4(in)
	q.hl = int(ip.HeaderLength())
	q.proto = ip.Protocol()
	if q.hl < header.IPv4MinimumSize || len(in) < q.hl+8 || (q.proto != protoTCP && q.proto != protoUDP) {
		return q, false
	}
	ports := in[q.hl:]
	q.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(in[ipSrcOffset:ipSrcOffset+4])), binary.BigEndian.Uint16(ports[0:]))
	q.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(in[ipDstOffset:ipDstOffset+4])), binary.BigEndian.Uint16(ports[2:]))
	return q, true
}

// setQuoted rewrites the quoted source (src=true) or destination address and
// port, keeping the quoted IP header checksum and the ICMP checksum right.
// The quoted transport checksum is left alone: the quote is often truncated,
// and neither Linux nor IPVS (ip_vs_nat_icmp) checks or fixes it.
func setQuoted(icmp header.ICMPv4, q quoted, src bool, to netip.AddrPort) {
	in := icmp[icmpInnerIP:]
	xsum := icmp.Checksum()
	addrOff, portOff, old := ipDstOffset, 2, q.dst
	if src {
		addrOff, portOff, old = ipSrcOffset, 0, q.src
	}
	if old.Addr() != to.Addr() {
		// Fold the address change into the quoted IP checksum, then fold
		// both changes into the ICMP checksum (which covers the quote).
		ipsum := binary.BigEndian.Uint16(in[ipChecksumOffset:])
		o, n := old.Addr().As4(), to.Addr().As4()
		for i := 0; i < 4; i += 2 {
			ipsum = csumReplace16(ipsum, binary.BigEndian.Uint16(o[i:]), binary.BigEndian.Uint16(n[i:]))
		}
		xsum = putAddr4(icmp, icmpInnerIP+addrOff, to.Addr(), xsum)
		xsum = put16(icmp, icmpInnerIP+ipChecksumOffset, ipsum, xsum)
	}
	xsum = put16(icmp, icmpInnerIP+q.hl+portOff, to.Port(), xsum)
	icmp.SetChecksum(xsum)
}

// setQuotedSeq adds delta to the quoted TCP sequence number.
func setQuotedSeq(icmp header.ICMPv4, q quoted, delta uint32) {
	if q.proto != protoTCP || delta == 0 {
		return
	}
	off := icmpInnerIP + q.hl + header.TCPSeqNumOffset
	seq := binary.BigEndian.Uint32(icmp[off:]) + delta
	icmp.SetChecksum(put32(icmp, off, seq, icmp.Checksum()))
}

// icmpToVIP handles an ICMP message addressed to a VIP: echo requests are
// answered by the director, errors about a flow are translated toward its
// real, anything else is dropped.
func (d *Director) icmpToVIP(p *packet) (wire.Verdict, DropReason, []byte) {
	icmp := header.ICMPv4(p.l4)
	switch t := icmp.Type(); {
	case t == header.ICMPv4Echo && icmp.Code() == 0:
		echoReply(p)
		d.stats.EchoReplies++
		return wire.Forward, DropNone, p.ip
	case isICMPError(t):
		// The client reports on a packet VIP -> client: the quote says
		// src=VIP:port, dst=client:port.
		q, ok := parseQuoted(icmp)
		if !ok {
			return wire.Drop, DropMalformed, nil
		}
		slot, side, found := d.flows.lookup(Key{q.proto, q.dst, q.src})
		if !found || side != sideClient {
			return wire.Drop, DropICMPNoFlow, nil
		}
		f := &d.flows.slab[slot]
		setQuoted(icmp, q, true, f.Real.AddrPort())
		if f.Kind == KindRecovered {
			// The real knows this segment as real -> recovery address,
			// in its own sequence space.
			setQuoted(icmp, q, false, f.Local.AddrPort())
			setQuotedSeq(icmp, q, -f.AckDelta)
		}
		p.ip.SetDestinationAddressWithChecksumUpdate(tcpipAddr(f.Real.Addr()))
		d.stats.ICMPErrors++
		return wire.Forward, DropNone, p.ip
	}
	return wire.Drop, DropICMPOther, nil
}

// icmpErrorFromRealSide translates an ICMP error about a packet the director
// sent toward a real (quote: src=client, dst=real), sent by the real itself or
// by a router on the way. ok is false when the message is not such an error;
// the caller then forwards it unchanged.
func (d *Director) icmpErrorFromRealSide(p *packet) (v wire.Verdict, r DropReason, ok bool) {
	if len(p.l4) < header.ICMPv4MinimumSize || !isICMPError(header.ICMPv4(p.l4).Type()) {
		return wire.Forward, DropNone, false
	}
	q, qok := parseQuoted(p.l4)
	if !qok {
		return wire.Forward, DropNone, false
	}
	slot, side, found := d.flows.lookup(Key{q.proto, q.dst, q.src})
	if !found || side != sideReal {
		return wire.Forward, DropNone, false
	}
	if r := p.decodeL4(); r != DropNone {
		return wire.Drop, r, true
	}
	f := &d.flows.slab[slot]
	icmp := header.ICMPv4(p.l4)
	setQuoted(icmp, q, false, f.VIP.AddrPort())
	if f.Kind == KindRecovered {
		// The client knows this segment as client -> VIP, in its own
		// sequence space (Linux ignores an error whose quoted sequence is
		// outside SND.UNA..SND.NXT).
		setQuoted(icmp, q, true, f.Client.AddrPort())
		setQuotedSeq(icmp, q, f.SeqDelta)
		p.ip.SetDestinationAddressWithChecksumUpdate(tcpipAddr(f.Client.Addr()))
	}
	if p.src.Addr() == f.Real.Addr() {
		// The client must not learn the real's address, and Linux matches
		// errors to sockets by the quote, not the sender: say it came from
		// the VIP, as IPVS does.
		p.ip.SetSourceAddressWithChecksumUpdate(tcpipAddr(f.VIP.Addr()))
	}
	d.stats.ICMPErrors++
	return wire.Forward, DropNone, true
}

// echoReply turns an echo request into its reply in place. Swapping the
// addresses leaves the IP checksum unchanged (the sum is commutative).
func echoReply(p *packet) {
	ip := p.ip
	var src, dst [4]byte
	copy(src[:], ip[ipSrcOffset:])
	copy(dst[:], ip[ipDstOffset:])
	copy(ip[ipSrcOffset:], dst[:])
	copy(ip[ipDstOffset:], src[:])
	// TTL shares a word with the protocol.
	const ttlOffset = 8
	ip.SetChecksum(put16(ip, ttlOffset, uint16(64)<<8|uint16(ip.Protocol()), ip.Checksum()))
	icmp := header.ICMPv4(p.l4)
	icmp.SetChecksum(put16(icmp, 0, uint16(header.ICMPv4EchoReply)<<8|uint16(icmp.Code()), icmp.Checksum()))
}
