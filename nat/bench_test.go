package nat

import (
	"bytes"
	"net/netip"
	"runtime"
	"testing"

	"holdfast/internal/wire"
)

// BenchmarkHandle measures the per-packet path (decode, lookup, rewrite) for a
// plain flow in each direction, including checksum verification. The ts
// case carries timestamps (as Linux peers do) through the timestamp cookie
// at its default width: the TSval encoded, the TSecr restored.
func BenchmarkHandle(b *testing.B) {
	for _, size := range []int{0, 1448} {
		d := newTestDirector(b)
		d.HandlePacket(tcp4(client, vip, syn, 1, 0, nil), 1)
		in := tcp4(client, vip, psh, 1, 1, make([]byte, size))
		out := tcp4(rs1, client, psh, 1, 1, make([]byte, size))
		benchBothWays(b, d, size, in, out)
	}
	b.Run("ts", func(b *testing.B) {
		for _, size := range []int{0, 1448} {
			d := newTestDirector(b, func(c *Config) { c.CookieBits = DefaultCookieBits })
			d.HandlePacket(tcp4(client, vip, syn, 1, 0, nil, tsOpt(100, 0)...), 1)
			d.HandlePacket(tcp4(rs1, client, synack, 1, 2, nil, tsOpt(1000, 100)...), 1)
			d.HandlePacket(tcp4(rs1, client, psh, 2, 2, []byte("x"), tsOpt(1005, 100)...), 1)
			in := tcp4(client, vip, psh, 2, 3, make([]byte, size), tsOpt(101, 1010)...)
			out := tcp4(rs1, client, psh, 3, 2, make([]byte, size), tsOpt(1006, 101)...)
			benchBothWays(b, d, size, in, out)
		}
	})
}

// benchBothWays runs Handle on in and out (each a sub-benchmark), copied
// into one buffer before every call since Handle rewrites in place.
func benchBothWays(b *testing.B, d *Director, size int, in, out []byte) {
	buf := make([]byte, max(len(in), len(out)))
	for _, c := range []struct {
		name string
		pkt  []byte
	}{{"to-real", in}, {"to-client", out}} {
		b.Run(c.name+"/"+itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.pkt)))
			for b.Loop() {
				copy(buf, c.pkt)
				if o, _ := d.HandlePacket(buf[:len(c.pkt)], 3); o == nil {
					b.Fatal("dropped")
				}
			}
		})
	}
}

// BenchmarkPassThrough measures a packet that is not the director's (written
// back unchanged), the cost every routed packet pays.
func BenchmarkPassThrough(b *testing.B) {
	d := newTestDirector(b)
	pkt := tcp4("198.18.20.1:1000", "198.18.30.1:443", psh, 1, 1, make([]byte, 64))
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if out, _ := d.HandlePacket(pkt, 2); !bytes.Equal(out, pkt) {
			b.Fatal("changed")
		}
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var s []byte
	for ; n > 0; n /= 10 {
		s = append([]byte{byte('0' + n%10)}, s...)
	}
	return string(s)
}

// BenchmarkHandleRecovered measures a recovered flow: NAT plus sequence,
// timestamp and SACK translation, both directions.
func BenchmarkHandleRecovered(b *testing.B) {
	d, _ := newRecDirector(b)
	key := Key{protoTCP, ap(client), ap(vip)}
	d.HandlePacket(tcp4(client, vip, psh, 1000, 2000, []byte("GET /"), tsOpt(1, 2)...), 1)
	d.Recovered(key, wire.Handshake{AckSeq: 7, AckAck: 9, TS: true, OurWScale: 7, PeerWScale: 7}, 2)
	for _, size := range []int{0, 1448} {
		in := tcp4(client, vip, ack, 1005, 2000, make([]byte, size), opts(tsOpt(3, 4), sackOpt(1900, 1950))...)
		out := tcp4(rs1, local, psh, 9, 12, make([]byte, size), tsOpt(5, 6)...)
		benchBothWays(b, d, size, in, out)
	}
}

// The parts of the per-packet path on their own: decode, lookup, rewrite.

// BenchmarkDecode decodes a data segment's IPv4 and TCP headers, checksums
// verified.
func BenchmarkDecode(b *testing.B) {
	for _, size := range []int{0, 1448} {
		pkt := tcp4(client, vip, psh, 1, 1, make([]byte, size))
		b.Run(itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(pkt)))
			for b.Loop() {
				var p packet
				if p.decodeIP(pkt) != DropNone || p.decodeL4() != DropNone {
					b.Fatal("decode failed")
				}
			}
		})
	}
}

// BenchmarkLookup finds a flow by its client key in a table of 100,000
// flows (two index entries each).
func BenchmarkLookup(b *testing.B) {
	t := newTable()
	const n = 100_000
	keys := make([]Key, n)
	for i := range n {
		f := flow{
			Proto:  protoTCP,
			Client: endpointOf(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(1024+i%60000))),
		}
		t.insert(f, fkey{f.Client, endpointOf(ap(vip)), protoTCP}, fkey{endpointOf(ap(rs1)), f.Client, protoTCP})
		keys[i] = Key{protoTCP, f.Client.AddrPort(), ap(vip)}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, side, ok := t.lookup(keys[i]); !ok || side != sideClient {
			b.Fatal("not found")
		}
		if i++; i == n {
			i = 0
		}
	}
}

// BenchmarkRewrite rewrites a decoded segment for a plain flow (addresses
// and ports, checksums updated) and for a recovered one (plus sequence,
// timestamp and SACK translation).
func BenchmarkRewrite(b *testing.B) {
	pkt := tcp4(client, vip, ack, 1005, 2000, make([]byte, 1448), opts(tsOpt(3, 4), sackOpt(1900, 1950))...)
	buf := make([]byte, len(pkt))
	x := xlate{seq: 100, ack: 200, tsval: 300, tsecr: 400, sack: 200, ts: true}
	for _, recovered := range []bool{false, true} {
		name := "plain"
		if recovered {
			name = "recovered"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(pkt)))
			for b.Loop() {
				copy(buf, pkt)
				var p packet
				p.decodeIP(buf)
				p.decodeL4()
				if recovered {
					x.apply(&p)
					rewriteSrc(&p, ap(local))
				}
				rewriteDst(&p, ap(rs1))
			}
		})
	}
}

// BenchmarkCookie measures the timestamp cookie's own work on a decoded
// segment with timestamps: the TSval encoded (to the client) and the TSecr
// restored (to the real), checksums updated, what BenchmarkHandle/ts adds.
// The segment is rewritten again and again in place: each round changes
// its timestamp as the first did.
func BenchmarkCookie(b *testing.B) {
	d := newTestDirector(b, func(c *Config) { c.CookieBits = DefaultCookieBits })
	d.HandlePacket(tcp4(client, vip, syn, 1, 0, nil, tsOpt(100, 0)...), 1)
	d.HandlePacket(tcp4(rs1, client, synack, 1, 2, nil, tsOpt(1000, 100)...), 1)
	d.HandlePacket(tcp4(rs1, client, psh, 2, 2, []byte("x"), tsOpt(1005, 100)...), 1)
	slot, _, _ := d.flows.lookup(Key{protoTCP, ap(client), ap(vip)})
	f := &d.flows.slab[slot]
	for _, c := range []struct {
		name string
		pkt  []byte
		fn   func(*packet, *flow)
	}{
		{"to-client", tcp4(rs1, client, psh, 3, 2, nil, tsOpt(1006, 101)...), func(p *packet, f *flow) { d.cookieToClient(p, f, 5) }},
		{"to-real", tcp4(client, vip, psh, 2, 3, nil, tsOpt(101, 1010)...), d.cookieToReal},
	} {
		var p packet
		p.decodeIP(c.pkt)
		p.decodeL4()
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.fn(&p, f)
			}
		})
	}
}

// BenchmarkFlowMemory reports the heap one flow costs (its slab slot and
// its two index entries), in a table of 50,000 flows made by SYNs: IPv4
// flows on the IPv4 test director, IPv6 ones on the dual-stack one.
func BenchmarkFlowMemory(b *testing.B) {
	for _, f := range []struct {
		name   string
		d      func() *Director
		client func(i int) string
		vip    string
	}{
		{"IPv4", func() *Director { return newTestDirector(b, func(c *Config) { c.MaxFlows = 100_000 }) },
			func(i int) string {
				return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 40000).String()
			}, vip},
		{"IPv6", func() *Director { d, _ := dualDirector(b); d.maxFlows = 100_000; return d },
			func(i int) string {
				a := netip.MustParseAddr("2001:2:0:10::").As16()
				a[14], a[15] = byte(i>>8), byte(i)
				return netip.AddrPortFrom(netip.AddrFrom16(a), 40000).String()
			}, vip6},
	} {
		b.Run(f.name, func(b *testing.B) {
			const n = 50_000
			syns := make([][]byte, n)
			for i := range syns {
				syns[i] = tcp4(f.client(i), f.vip, syn, 1, 0, nil)
			}
			var perFlow float64
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				d := f.d()
				for _, s := range syns {
					if out, _ := d.HandlePacket(bytes.Clone(s), 1); out == nil {
						b.Fatal("SYN dropped")
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perFlow = float64(after.HeapAlloc-before.HeapAlloc) / n
				runtime.KeepAlive(d)
			}
			b.ReportMetric(perFlow, "B/flow")
		})
	}
}
