package nat

import (
	"bytes"
	"encoding/binary"
	"testing"

	"holdfast/internal/wire"
)

// asPartial returns b with its TCP/UDP checksum replaced by what a
// virtio-net header flagged NEEDS_CSUM carries: the (uncomplemented)
// pseudo-header sum only.
func asPartial(b []byte) []byte {
	b = bytes.Clone(b)
	var p packet
	if p.decodeIP(b) != DropNone {
		panic("asPartial: not an IP packet")
	}
	off := len(b) - len(p.l4) + 16
	if p.proto == protoUDP {
		off = len(b) - len(p.l4) + 6
	}
	binary.BigEndian.PutUint16(b[off:], p.pseudoSum(len(p.l4)))
	return b
}

// With NEEDS_CSUM, every rewrite keeps the checksum field equal to the
// pseudo-header sum of the new header, and completing it gives exactly the
// packet the full-checksum path produces.
func TestPartialChecksumRewrites(t *testing.T) {
	full, _ := newRecDirector(t)
	part, _ := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	// A recovered flow on both directors, set up with full checksums.
	for _, d := range []*Director{full, part} {
		d.HandlePacket(tcp4(client, vip, psh, 1000, 2000, []byte("GET /"), tsOpt(1, 2)...), 1)
		d.Recovered(key, wire.Handshake{AckSeq: 7, AckAck: 9, TS: true, AckTSval: 3, SynAckTSval: 4, OurWScale: 7, PeerWScale: 7}, 2)
		d.HandlePacket(udp4(client, udpVIP, []byte("q")), 2)
	}
	cases := []struct {
		name string
		pkt  []byte
	}{
		{"recovered, to the real", tcp4(client, vip, ack, 1005, 2000, make([]byte, 3000), opts(tsOpt(5, 6), sackOpt(1990, 1995))...)},
		{"recovered, to the client", tcp4(rs1, local, psh, 9, 12, make([]byte, 100), tsOpt(7, 8)...)},
		{"plain UDP, to the real", udp4(client, udpVIP, []byte("again"))},
		{"plain UDP, to the client", udp4("198.18.10.11:5353", client, []byte("answer"))},
		{"new TCP flow", tcp4(client2, vip, syn, 1, 0, nil)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v1, want := full.Handle(bytes.Clone(c.pkt), false, 3)
			v2, got := part.Handle(asPartial(c.pkt), true, 3)
			if v1 != wire.Forward || v2 != wire.Forward {
				t.Fatalf("verdicts %v, %v", v1, v2)
			}
			if !bytes.Equal(asPartial(want), got) {
				t.Fatalf("partial rewrite:\n got %x\nwant %x (as partial)", got, asPartial(want))
			}
			var p packet
			p.decodeIP(got)
			p.partial = true
			p.decodeL4()
			p.completeChecksum()
			checkChecksums(t, got)
			if !bytes.Equal(got, want) {
				t.Fatalf("completed:\n got %x\nwant %x", got, want)
			}
		})
	}
	// A partial segment with a wrong checksum is not dropped: the field is
	// not a checksum yet.
	bad := asPartial(tcp4(client, vip, ack, 1005, 2000, []byte("x")))
	bad[37] ^= 0xff
	if v, _ := part.Handle(bad, true, 3); v != wire.Forward {
		t.Fatalf("partial segment: %v", v)
	}
}

// A parked partial segment is flushed with a full checksum: it leaves
// without its virtio-net header.
func TestPartialParkedCompleted(t *testing.T) {
	d, _ := newRecDirector(t)
	key := Key{protoTCP, ap(client), ap(vip)}
	if v, _ := d.Handle(asPartial(tcp4(client, vip, psh, 100, 200, []byte("GET /"))), true, 1); v != wire.Park {
		t.Fatalf("verdict %v, want park", v)
	}
	out := d.Recovered(key, wire.Handshake{AckSeq: 1, AckAck: 2}, 2)
	if len(out) != 1 {
		t.Fatalf("%d flushed", len(out))
	}
	checkChecksums(t, out[0])
	if want := tcp4(local, rs1, psh, 1, 2, []byte("GET /")); !bytes.Equal(out[0], want) {
		t.Fatalf("flushed %x, want %x", out[0], want)
	}
}
