package nat

import (
	"bytes"
	"encoding/binary"
	"holdfast/nat/nattest"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func fuzzSeeds(f *testing.F) {
	f.Add(tcp4(client, vip, syn, 1000, 0, nil))
	f.Add(tcp4(client, vip, psh, 0xfffffff0, 7, []byte("hello world"), 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2))
	f.Add(tcp4(rs1, client, psh, 5, 6, []byte("reply")))
	f.Add(udp4(client, udpVIP, []byte("q")))
	f.Add(udp4("198.18.10.11:5353", client, []byte("a")))
	f.Add(icmp4("198.18.1.2", "198.18.100.1", header.ICMPv4Echo, 0, 1, []byte("x")))
	f.Add(icmp4("198.18.2.1", "198.18.100.1", header.ICMPv4DstUnreachable, 4, 1400, tcp4(vip, client, ack, 1, 1, nil)[:28]))
	f.Add([]byte{0x45})
	// IPv6: a service's SYN, a reply, UDP, an echo request, a Packet Too
	// Big quoting a VIP -> client segment, extension headers, a fragment.
	f.Add(tcp4(client6, vip6, syn, 1000, 0, nil))
	f.Add(tcp4(rs1v6, client6, psh, 5, 6, []byte("reply")))
	f.Add(udp4(client6, udpVIP6, []byte("q")))
	f.Add(nattest.ICMP6("2001:2:0:10::2", "2001:2::100", header.ICMPv6EchoRequest, 0, 1, []byte("x")))
	f.Add(nattest.ICMP6("2001:2:0:10::1", "2001:2::100", header.ICMPv6PacketTooBig, 0, 1280, tcp4(vip6, client6, ack, 1, 1, nil)[:48]))
	f.Add(withExt(tcp4(client6, vip6, syn, 1000, 0, nil), 0, 60))
	f.Add(withExt(tcp4(client6, vip6, psh, 1, 1, []byte("frag")), 44))
}

// FuzzHandle feeds arbitrary bytes to a director that already holds a flow:
// nothing panics, and whatever is written is at most as long as the input and,
// when the director rewrote it, carries valid checksums. It then feeds a
// segment built from the same bytes (flags, seq, ack, options, payload, from
// either side) to a live ESTABLISHED flow whose handshake it saw, and checks
// the window rules: the flow is never removed by one segment (stale needs a
// suspect and then the real's reset), and its state moves only for a
// segment in window (a RST only in the RCV.NXT range).
func FuzzHandle(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		d := newTestDirector(t)
		d.HandlePacket(tcp4(client, vip, syn, 1000, 0, nil), 1)
		in := bytes.Clone(b)
		out, _ := d.HandlePacket(b, 2)
		if len(out) > len(in) {
			t.Fatalf("output longer than input")
		}
		if out != nil && !bytes.Equal(out, in[:len(out)]) {
			checkChecksums(t, out)
		}
		forgedSegment(t, in)
	})
}

// forgedSegment is FuzzHandle's second part: b read as the fields of one
// TCP segment against a live flow (knownFlow: client bytes up to 1006,
// real bytes up to 5101, both windows 502 << 7), then the real's bare RST
// at that segment's ack. Only a client segment in window acking beyond the
// mark may remove the flow at once; one out of window only through the
// real's reset.
func forgedSegment(t *testing.T, b []byte) {
	if len(b) < 10 {
		return
	}
	flags := header.TCPFlags(b[0]) & (header.TCPFlagFin | header.TCPFlagSyn | header.TCPFlagRst | header.TCPFlagPsh | header.TCPFlagAck)
	fromReal := b[1]&1 != 0
	seq, a := binary.BigEndian.Uint32(b[2:]), binary.BigEndian.Uint32(b[6:])
	rest := b[10:]
	var opt []byte
	if n := len(rest); n > 0 {
		k := min(int(rest[0])%11*4, n-1) &^ 3
		opt, rest = rest[1:1+k], rest[1+k:]
	}
	payload := rest
	if len(payload) > 1000 {
		payload = payload[:1000]
	}
	d, _ := newRecDirector(t)
	fl := knownFlow(t, d)
	before := *fl
	var pkt []byte
	if fromReal {
		pkt = tcp4(rs1, client, flags, seq, a, payload, opt...)
	} else {
		pkt = tcp4(client, vip, flags, seq, a, payload, opt...)
	}
	d.HandlePacket(pkt, 2)
	end := seq + uint32(len(payload))
	if flags&(header.TCPFlagSyn) != 0 {
		end++
	}
	if flags&header.TCPFlagFin != 0 {
		end++
	}
	const w, cli, srv = 502 << 7, uint32(1006), uint32(5101)
	slack := uint32(max(w, minAckWin))
	inWin := func(lo, hi, v uint32) bool { return !seqAfter(lo, v) && !seqAfter(v, hi) }
	g := flowOf(d, client)
	if g == nil {
		// Only a client segment in window whose ack passes the mark
		// makes the flow stale at once (window.go).
		if !fromReal && flags&(header.TCPFlagAck|header.TCPFlagSyn|header.TCPFlagRst) == header.TCPFlagAck && seqAfter(a, srv) && !seqAfter(cli-slack, end) && !seqAfter(seq, cli+w) {
			return
		}
		t.Fatalf("one segment (flags %v, seq %d, ack %d, from real %v) removed the flow", flags, seq, a, fromReal)
	}
	var may bool // what the window rules allow to change the state
	switch {
	case flags&header.TCPFlagRst != 0:
		may = inWin(cli, srv, seq) || inWin(cli, cli, seq)
	case fromReal:
		may = !seqAfter(srv-slack, end) && !seqAfter(seq, srv+w) && (flags&header.TCPFlagAck == 0 || inWin(cli-slack, cli, a))
	default:
		may = !seqAfter(cli-slack, end) && !seqAfter(seq, cli+w) && (flags&header.TCPFlagAck == 0 || inWin(srv-slack, srv, a))
	}
	if !may && (g.State != before.State || g.Expires != before.Expires || g.hiSrv != before.hiSrv) {
		t.Fatalf("out-of-window segment (flags %v, seq %d, ack %d, from real %v) changed the flow: state %v, mark %d", flags, seq, a, fromReal, g.State, g.hiSrv)
	}
	if !fromReal && seqAfter(g.hiSrv, srv) {
		t.Fatalf("mark moved to %d by a client segment, beyond every byte the real sent", g.hiSrv)
	}
	// The real's no-socket reset removes the flow only if that segment made
	// it suspect (a client ACK beyond the mark) with this very ack.
	suspect := g.win.flags&winSuspect != 0
	if suspect && (fromReal || flags&header.TCPFlagAck == 0 || !seqAfter(a, srv)) {
		t.Fatalf("suspect after flags %v, ack %d, from real %v", flags, a, fromReal)
	}
	d.HandlePacket(tcp4(rs1, client, rst, a, 0, nil), 3)
	if flowOf(d, client) == nil && !suspect {
		t.Fatalf("the real's reset at %d removed a flow that was not suspect", a)
	}
}

// FuzzRewriteRoundTrip: rewriting a valid TCP or UDP packet's source and
// destination, then rewriting them back, gives the original bytes, and every
// intermediate packet's checksums verify from scratch.
func FuzzRewriteRoundTrip(f *testing.F) {
	for _, s := range [][]byte{
		tcp4(client, vip, syn, 1000, 0, nil),
		tcp4(client, vip, psh, 0xfffffff0, 7, []byte("hello world"), 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2),
		udp4(client, udpVIP, []byte("q")),
		tcp4(client6, vip6, psh, 0xfffffff0, 7, []byte("hello world"), 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2),
		udp4(client6, udpVIP6, []byte("q")),
		withExt(tcp4(client6, vip6, syn, 1000, 0, nil), 0, 60),
	} {
		f.Add(s, uint32(0xc6120a0b), uint16(8080))
	}
	f.Fuzz(func(t *testing.T, b []byte, addr uint32, port uint16) {
		if port == 0 {
			port = 1
		}
		var p packet
		if p.decodeIP(b) != DropNone || p.frag || (p.proto != protoTCP && p.proto != protoUDP) || p.decodeL4() != DropNone {
			return
		}
		if p.proto == protoUDP && header.UDP(p.l4).Checksum() == 0 {
			return // no checksum to keep
		}
		orig := bytes.Clone(p.ip)
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], addr)
		to := netip.AddrPortFrom(netip.AddrFrom4(a), port)
		if p.v6 {
			// An address of the packet's family: 2001:2::/48 with the
			// fuzzed bits at both ends.
			b6 := netip.MustParseAddr("2001:2::").As16()
			copy(b6[6:10], a[:])
			copy(b6[12:], a[:])
			to = netip.AddrPortFrom(netip.AddrFrom16(b6), port)
		}
		src, dst := p.src, p.dst
		rewriteDst(&p, to)
		rewriteSrc(&p, to)
		checkChecksums(t, p.ip)
		var q packet
		if q.decodeIP(p.ip) != DropNone || q.decodeL4() != DropNone || q.src != to || q.dst != to {
			t.Fatalf("rewritten packet does not decode to %v -> %v", to, to)
		}
		rewriteSrc(&p, src)
		rewriteDst(&p, dst)
		if !sameModuloZero(p.ip, orig) {
			t.Fatalf("round trip changed the packet:\n got %x\nwant %x", []byte(p.ip), orig)
		}
	})
}

// sameModuloZero compares two packets, treating the one's-complement zeros
// 0x0000 and 0xffff as equal in the IP and transport checksum fields: both
// verify, and an incremental update may legitimately produce either.
func sameModuloZero(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = bytes.Clone(a), bytes.Clone(b)
	norm := func(x []byte, off int) {
		if v := binary.BigEndian.Uint16(x[off:]); v == 0xffff {
			binary.BigEndian.PutUint16(x[off:], 0)
		}
	}
	var p packet
	if p.decodeIP(a) != DropNone {
		return false
	}
	hl := len(a) - len(p.l4)
	off := hl + 16
	if p.proto == protoUDP {
		off = hl + 6
	}
	for _, x := range [][]byte{a, b} {
		if !p.v6 {
			norm(x, 10) // IPv4's header checksum
		}
		norm(x, off)
	}
	return bytes.Equal(a, b)
}

// FuzzTranslateRoundTrip: a recovered flow's translation, with random TCP
// options (timestamps, SACK, garbage), keeps every checksum valid, and the
// inverse translation restores the original segment.
func FuzzTranslateRoundTrip(f *testing.F) {
	f.Add([]byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, uint32(1), uint32(2), uint32(3), uint32(4), uint32(5), true)
	f.Add([]byte{1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4}, uint32(0xffffffff), uint32(1<<31), uint32(0), uint32(9), uint32(7), true)
	f.Add([]byte{1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 5, 10, 1, 2, 3, 4, 5, 6, 7, 8}, uint32(3), uint32(3), uint32(3), uint32(3), uint32(3), true)
	f.Add([]byte{2, 4, 5, 180, 3, 3, 7, 0}, uint32(1), uint32(1), uint32(1), uint32(1), uint32(1), false)
	f.Fuzz(func(t *testing.T, opt []byte, seq, ack, tsval, tsecr, sack uint32, ts bool) {
		if len(opt) > 40 {
			opt = opt[:40]
		}
		for len(opt)%4 != 0 {
			opt = append(opt, header.TCPOptionNOP)
		}
		pkt := tcp4(client, vip, psh, 1234, 5678, []byte("payload"), opt...)
		orig := bytes.Clone(pkt)
		x := xlate{seq: seq, ack: ack, tsval: tsval, tsecr: tsecr, sack: sack, ts: ts}
		var p packet
		if p.decodeIP(pkt) != DropNone || p.decodeL4() != DropNone {
			t.Fatal("built packet does not decode")
		}
		x.apply(&p)
		checkChecksums(t, pkt)
		if got := header.TCP(p.l4); got.SequenceNumber() != 1234+seq || got.AckNumber() != 5678+ack {
			t.Fatalf("seq/ack %d/%d", got.SequenceNumber(), got.AckNumber())
		}
		inv := xlate{seq: -seq, ack: -ack, tsval: -tsval, tsecr: -tsecr, sack: -sack, ts: ts}
		inv.apply(&p)
		if !sameModuloZero(pkt, orig) {
			t.Fatalf("round trip:\n got %x\nwant %x", pkt, orig)
		}
	})
}
