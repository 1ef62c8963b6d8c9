package balancer

import (
	"net/netip"
	"strconv"
	"testing"
	"time"
)

func TestParseReal(t *testing.T) {
	const syntax = ": expected ADDR:PORT[*WEIGHT][,id=N], e.g. 198.18.10.11:80*2"
	tests := []struct {
		in         string
		wantAddr   string
		wantWeight int
		wantID     uint16
		wantErr    string
	}{
		{in: "198.18.10.11:80,id=3", wantAddr: "198.18.10.11:80", wantWeight: 1, wantID: 3},
		{in: "198.18.10.11:80*2,id=511", wantAddr: "198.18.10.11:80", wantWeight: 2, wantID: 511},
		{in: "[2001:db8::1]:80*0,id=1", wantAddr: "[2001:db8::1]:80", wantWeight: 0, wantID: 1},
		{in: "198.18.10.11:80,id=0", wantErr: `invalid real "198.18.10.11:80,id=0": cookie id 0: expected a number 1..511`},
		{in: "198.18.10.11:80,id=512", wantErr: `invalid real "198.18.10.11:80,id=512": cookie id 512: expected a number 1..511`},
		{in: "198.18.10.11:80,id=", wantErr: `invalid real "198.18.10.11:80,id=": cookie id "": expected a number 1..511`},
		{in: "198.18.10.11:80,id=+1", wantErr: `invalid real "198.18.10.11:80,id=+1": cookie id "+1": expected a number 1..511`},
		{in: "198.18.10.11:80,weight=1", wantErr: `invalid real "198.18.10.11:80,weight=1": "weight=1": expected id=N after the comma`},
		{in: "198.18.10.11:80,id=1*2", wantErr: `invalid real "198.18.10.11:80,id=1*2": cookie id "1*2": expected a number 1..511`},
		{in: "198.18.10.11:80", wantAddr: "198.18.10.11:80", wantWeight: 1},
		{in: "198.18.10.11:80*2", wantAddr: "198.18.10.11:80", wantWeight: 2},
		{in: "198.18.10.11:80*0", wantAddr: "198.18.10.11:80", wantWeight: 0},
		{in: "198.18.10.11:65535*65535", wantAddr: "198.18.10.11:65535", wantWeight: 65535},
		{in: "198.18.10.11:80*007", wantAddr: "198.18.10.11:80", wantWeight: 7},
		{in: "[2001:db8::1]:8080*3", wantAddr: "[2001:db8::1]:8080", wantWeight: 3},
		{in: "[::ffff:198.18.10.11]:80", wantAddr: "198.18.10.11:80", wantWeight: 1},

		{in: "198.18.0.1", wantErr: `invalid real "198.18.0.1"` + syntax},
		{in: "", wantErr: `invalid real ""` + syntax},
		{in: "*2", wantErr: `invalid real "*2"` + syntax},
		{in: "rs1.example:80", wantErr: `invalid real "rs1.example:80"` + syntax},
		{in: "198.18.0.1:http", wantErr: `invalid real "198.18.0.1:http"` + syntax},
		{in: "198.18.0.1:65536", wantErr: `invalid real "198.18.0.1:65536"` + syntax},
		{in: "2001:db8::1:80", wantErr: `invalid real "2001:db8::1:80": put IPv6 addresses in brackets: [2001:db8::1]:80`},
		{in: "2001:2::11:80*2", wantErr: `invalid real "2001:2::11:80*2": put IPv6 addresses in brackets: [2001:2::11]:80`},
		{in: "2001:2::11", wantErr: `invalid real "2001:2::11"` + syntax},
		{in: "[2001:2::11]:80", wantAddr: "[2001:2::11]:80", wantWeight: 1},
		{in: "[fe80::1]:80", wantErr: `invalid real "[fe80::1]:80": address fe80::1 is link-local`},
		{in: "[ff02::1]:80", wantErr: `invalid real "[ff02::1]:80": address ff02::1 is multicast`},
		{in: "[::]:80", wantErr: `invalid real "[::]:80": address :: is unspecified`},
		{in: "169.254.0.1:80", wantErr: `invalid real "169.254.0.1:80": address 169.254.0.1 is link-local`},
		{in: "127.0.0.1:80", wantAddr: "127.0.0.1:80", wantWeight: 1}, // the checker's tests use such reals
		{in: "198.18.0.1:0", wantErr: `invalid real "198.18.0.1:0": port 0 is not allowed; expected 1..65535`},
		{in: "198.18.0.1:80*", wantErr: `invalid real "198.18.0.1:80*": weight "": expected a number 0..65535`},
		{in: "198.18.0.1:80*x", wantErr: `invalid real "198.18.0.1:80*x": weight "x": expected a number 0..65535`},
		{in: "198.18.0.1:80*-1", wantErr: `invalid real "198.18.0.1:80*-1": weight "-1": expected a number 0..65535`},
		{in: "198.18.0.1:80*+1", wantErr: `invalid real "198.18.0.1:80*+1": weight "+1": expected a number 0..65535`},
		{in: "198.18.0.1:80*1.5", wantErr: `invalid real "198.18.0.1:80*1.5": weight "1.5": expected a number 0..65535`},
		{in: "198.18.0.1:80*65536", wantErr: `invalid real "198.18.0.1:80*65536": weight 65536: expected a number 0..65535`},
		{in: "198.18.0.1:80*2*3", wantErr: `invalid real "198.18.0.1:80*2*3": weight "2*3": expected a number 0..65535`},
		{in: "[fe80::1%eth0]:80", wantErr: `invalid real "[fe80::1%eth0]:80": address fe80::1%eth0 has a zone, which is not supported`},
		{in: "0.0.0.0:80", wantErr: `invalid real "0.0.0.0:80": address 0.0.0.0 is unspecified`},
		{in: "224.0.0.1:80", wantErr: `invalid real "224.0.0.1:80": address 224.0.0.1 is multicast`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			addr, weight, id, err := ParseReal(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseReal(%q) error = %v\nwant %s", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseReal(%q): %v", tt.in, err)
			}
			if addr != netip.MustParseAddrPort(tt.wantAddr) || weight != tt.wantWeight || id != tt.wantID {
				t.Errorf("ParseReal(%q) = %v, %d, %d, want %s, %d, %d", tt.in, addr, weight, id, tt.wantAddr, tt.wantWeight, tt.wantID)
			}
		})
	}
}

func TestParseService(t *testing.T) {
	const syntax = ": expected PROTO:VIP:PORT with PROTO tcp or udp, e.g. tcp:198.18.0.10:80"
	tests := []struct {
		in        string
		wantProto Proto
		wantVIP   string
		wantErr   string
	}{
		{in: "tcp:198.18.0.10:80", wantProto: TCP, wantVIP: "198.18.0.10:80"},
		{in: "TCP:198.18.0.10:443", wantProto: TCP, wantVIP: "198.18.0.10:443"},
		{in: "udp:198.18.0.10:53", wantProto: UDP, wantVIP: "198.18.0.10:53"},
		{in: "Udp:[2001:db8::10]:53", wantProto: UDP, wantVIP: "[2001:db8::10]:53"},

		{in: "sctp:1.2.3.4:80", wantErr: `invalid service "sctp:1.2.3.4:80"` + syntax},
		{in: "198.18.0.10:80", wantErr: `invalid service "198.18.0.10:80"` + syntax},
		{in: "tcp", wantErr: `invalid service "tcp"` + syntax},
		{in: "", wantErr: `invalid service ""` + syntax},
		{in: "tcp:198.18.0.10", wantErr: `invalid service "tcp:198.18.0.10"` + syntax},
		{in: "tcp:198.18.0.10:80*2", wantErr: `invalid service "tcp:198.18.0.10:80*2"` + syntax},
		{in: "tcp:198.18.0.10:0", wantErr: `invalid service "tcp:198.18.0.10:0": port 0 is not allowed; expected 1..65535`},
		{in: "tcp:0.0.0.0:80", wantErr: `invalid service "tcp:0.0.0.0:80": address 0.0.0.0 is unspecified`},
		{in: "tcp:[2001:2::10]:80", wantProto: TCP, wantVIP: "[2001:2::10]:80"},
		{in: "tcp:2001:2::10:80", wantErr: `invalid service "tcp:2001:2::10:80": put IPv6 addresses in brackets: [2001:2::10]:80`},
		{in: "tcp:[fe80::10%eth0]:80", wantErr: `invalid service "tcp:[fe80::10%eth0]:80": address fe80::10%eth0 has a zone, which is not supported`},
		{in: "tcp:[fe80::10]:80", wantErr: `invalid service "tcp:[fe80::10]:80": address fe80::10 is link-local`},
		{in: "udp:[ff05::1:3]:547", wantErr: `invalid service "udp:[ff05::1:3]:547": address ff05::1:3 is multicast`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			proto, vip, err := ParseService(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseService(%q) error = %v\nwant %s", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseService(%q): %v", tt.in, err)
			}
			if proto != tt.wantProto || vip != netip.MustParseAddrPort(tt.wantVIP) {
				t.Errorf("ParseService(%q) = %v, %v, want %v, %s", tt.in, proto, vip, tt.wantProto, tt.wantVIP)
			}
		})
	}
}

func TestProtoString(t *testing.T) {
	for p, want := range map[Proto]string{TCP: "tcp", UDP: "udp", 132: "proto(132)"} {
		if got := p.String(); got != want {
			t.Errorf("Proto(%d).String() = %q, want %q", p, got, want)
		}
	}
}

func TestServiceConfigBuild(t *testing.T) {
	valid := func(f func(*ServiceConfig)) ServiceConfig {
		c := ServiceConfig{Service: "tcp:198.18.0.10:80", Reals: []string{"198.18.10.11:80", "198.18.10.12:80*2"}}
		if f != nil {
			f(&c)
		}
		return c
	}
	tests := []struct {
		name    string
		cfg     ServiceConfig
		wantErr string
	}{
		{"bad service", valid(func(c *ServiceConfig) { c.Service = "sctp:1.2.3.4:80" }),
			`service: invalid service "sctp:1.2.3.4:80": expected PROTO:VIP:PORT with PROTO tcp or udp, e.g. tcp:198.18.0.10:80`},
		{"bad scheduler", valid(func(c *ServiceConfig) { c.Scheduler = "xx" }),
			`scheduler: unknown scheduler "xx" (expected rr, wrr, sh, dh or lc)`},
		{"bad persistence", valid(func(c *ServiceConfig) { c.Persistence = "30" }),
			`persistence: invalid duration "30": expected a non-negative Go duration, e.g. 30m or 1h30m`},
		{"negative persistence", valid(func(c *ServiceConfig) { c.Persistence = "-1s" }),
			`persistence: invalid duration "-1s": expected a non-negative Go duration, e.g. 30m or 1h30m`},
		{"no reals", valid(func(c *ServiceConfig) { c.Reals = nil }),
			`reals: no real server given for service tcp:198.18.0.10:80; expected at least one ADDR:PORT[*WEIGHT] (or [] for none yet)`},
		{"bad real", valid(func(c *ServiceConfig) { c.Reals = append(c.Reals, "198.18.10.13") }),
			`reals[2]: invalid real "198.18.10.13": expected ADDR:PORT[*WEIGHT][,id=N], e.g. 198.18.10.11:80*2`},
		{"duplicate real", valid(func(c *ServiceConfig) { c.Reals = append(c.Reals, "198.18.10.11:80*5") }),
			`reals[2]: duplicate real 198.18.10.11:80, already given as reals[0]`},
		{"mixed IP versions", valid(func(c *ServiceConfig) { c.Reals = []string{"[2001:db8::1]:80"} }),
			`reals[0]: real [2001:db8::1]:80 and VIP 198.18.0.10 are of different IP versions`},
		{"IPv4 real of an IPv6 service", valid(func(c *ServiceConfig) {
			c.Service, c.Reals = "tcp:[2001:2::10]:80", []string{"[2001:2::11]:80", "198.18.10.11:80"}
		}),
			`reals[1]: real 198.18.10.11:80 and VIP 2001:2::10 are of different IP versions`},
		{"real is the VIP", valid(func(c *ServiceConfig) { c.Reals = []string{"198.18.0.10:80"} }),
			`reals[0]: real 198.18.0.10:80 is the service's own VIP:PORT`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.Build()
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("Build error = %v\nwant %s", err, tt.wantErr)
			}
		})
	}
}

func TestServiceConfigBuildValid(t *testing.T) {
	cfg := ServiceConfig{Service: "udp:198.18.0.10:53", Persistence: "30m",
		Reals: []string{"198.18.10.11:53", "198.18.10.12:53*0", "198.18.10.13:53*3"}}
	svc, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	if svc.Proto != UDP || svc.VIP != netip.MustParseAddrPort("198.18.0.10:53") || svc.Persistence != 30*time.Minute {
		t.Errorf("Build = %v persistence %v", svc, svc.Persistence)
	}
	if got := svc.String(); got != "udp:198.18.0.10:53" {
		t.Errorf("String = %q", got)
	}
	if got := svc.Scheduler.Name(); got != DefaultScheduler {
		t.Errorf("scheduler %q, want the default %q", got, DefaultScheduler)
	}
	wantWeights := []int{1, 0, 3}
	if len(svc.Reals) != len(wantWeights) {
		t.Fatalf("%d reals, want %d", len(svc.Reals), len(wantWeights))
	}
	for i, r := range svc.Reals {
		if r.Addr.String() != cfg.Reals[i][:len("198.18.10.1x:53")] || r.Weight != wantWeights[i] || r.Active != 0 || r.Inactive != 0 {
			t.Errorf("reals[%d] = %+v", i, *r)
		}
	}

	// A second Build shares nothing with the first: flow counts and
	// scheduler state belong to one Service.
	svc2, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	if svc2.Reals[0] == svc.Reals[0] || svc2.Scheduler == svc.Scheduler {
		t.Error("two Builds share a Real or a Scheduler")
	}

	cfg.Scheduler, cfg.Persistence = "LC", ""
	svc, err = cfg.Build()
	if err != nil || svc.Scheduler.Name() != "lc" || svc.Persistence != 0 {
		t.Errorf("Build with scheduler LC and no persistence = %v, %v", svc, err)
	}
}

func TestValidateServices(t *testing.T) {
	svc := func(s string) *Service {
		p, vip, err := ParseService(s)
		if err != nil {
			t.Fatal(err)
		}
		return &Service{Proto: p, VIP: vip}
	}
	tests := []struct {
		name    string
		svcs    []*Service
		wantErr string
	}{
		{"none", nil, ""},
		{"distinct", []*Service{svc("tcp:198.18.0.10:80"), svc("tcp:198.18.0.10:443"), svc("tcp:198.18.0.11:80")}, ""},
		{"same VIP:PORT, other proto", []*Service{svc("tcp:198.18.0.10:53"), svc("udp:198.18.0.10:53")}, ""},
		{"duplicate", []*Service{svc("tcp:198.18.0.10:80"), svc("udp:198.18.0.10:80"), svc("TCP:198.18.0.10:80")},
			"services[2]: duplicate service tcp:198.18.0.10:80, already given as services[0]"},
		{"nil", []*Service{svc("tcp:198.18.0.10:80"), nil}, "services[1]: missing service"},
		{"UDP with a TCP check", []*Service{svc("tcp:198.18.0.10:53"), withCheck(svc("udp:198.18.0.10:53"), Check{Kind: CheckTCP})},
			"services[1]: service udp:198.18.0.10:53: the check tcp probes its reals over TCP; a UDP service takes no check (none)"},
		{"TCP with a TCP check", []*Service{withCheck(svc("tcp:198.18.0.10:53"), Check{Kind: CheckTCP})}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateServices(tt.svcs)
			if got := errString(err); got != tt.wantErr {
				t.Errorf("ValidateServices error = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func withCheck(s *Service, c Check) *Service {
	s.Check = c
	return s
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// FuzzParseReal checks that ParseReal never panics and that what it accepts
// prints back to text it reads the same way.
func FuzzParseReal(f *testing.F) {
	for _, s := range []string{"198.18.10.11:80*2", "[2001:db8::1]:80", "1.2.3.4:0", "a*b", "[::ffff:1.2.3.4]:1*65535", "1.2.3.4:80*1,id=7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addr, weight, id, err := ParseReal(s)
		if err != nil {
			return
		}
		again := addr.String() + "*" + strconv.Itoa(weight)
		if id != 0 {
			again += ",id=" + strconv.Itoa(int(id))
		}
		addr2, weight2, id2, err := ParseReal(again)
		if err != nil || addr2 != addr || weight2 != weight || id2 != id {
			t.Fatalf("ParseReal(%q) = %v, %d, %d; ParseReal(%q) = %v, %d, %d, %v", s, addr, weight, id, again, addr2, weight2, id2, err)
		}
	})
}
