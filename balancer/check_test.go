package balancer

import (
	"testing"
	"time"
)

func TestParseCheck(t *testing.T) {
	const syntax = ": expected none, tcp, http:/PATH or http:/PATH=STATUS"
	tests := []struct {
		in      string
		want    Check
		wantErr string
	}{
		{in: "none", want: Check{}},
		{in: "NONE", want: Check{}},
		{in: "tcp", want: Check{Kind: CheckTCP}},
		{in: "Tcp", want: Check{Kind: CheckTCP}},
		{in: "http:/", want: Check{Kind: CheckHTTP, Path: "/", Status: 200}},
		{in: "http:/healthz", want: Check{Kind: CheckHTTP, Path: "/healthz", Status: 200}},
		{in: "HTTP:/Healthz", want: Check{Kind: CheckHTTP, Path: "/Healthz", Status: 200}},
		{in: "http:/healthz=204", want: Check{Kind: CheckHTTP, Path: "/healthz", Status: 204}},
		{in: "http:/=503", want: Check{Kind: CheckHTTP, Path: "/", Status: 503}},
		{in: "http:/s?full=1=200", want: Check{Kind: CheckHTTP, Path: "/s?full=1", Status: 200}},
		{in: "http:/a%20b", want: Check{Kind: CheckHTTP, Path: "/a%20b", Status: 200}},

		{in: "htp:/x", wantErr: `invalid check "htp:/x"` + syntax},
		{in: "", wantErr: `invalid check ""` + syntax},
		{in: "http", wantErr: `invalid check "http"` + syntax},
		{in: "http:", wantErr: `invalid check "http:"` + syntax},
		{in: "http:healthz", wantErr: `invalid check "http:healthz"` + syntax},
		{in: "tcp:80", wantErr: `invalid check "tcp:80"` + syntax},
		{in: "none:", wantErr: `invalid check "none:"` + syntax},
		{in: "https:/x", wantErr: `invalid check "https:/x"` + syntax},
		{in: "http:/x=", wantErr: `invalid check "http:/x=": status "": expected a number 100..599`},
		{in: "http:/x=abc", wantErr: `invalid check "http:/x=abc": status "abc": expected a number 100..599`},
		{in: "http:/x=99", wantErr: `invalid check "http:/x=99": status "99": expected a number 100..599`},
		{in: "http:/x=600", wantErr: `invalid check "http:/x=600": status "600": expected a number 100..599`},
		{in: "http:/x=2000", wantErr: `invalid check "http:/x=2000": status "2000": expected a number 100..599`},
		{in: "http:/s?full=1", wantErr: `invalid check "http:/s?full=1": status "1": expected a number 100..599; a path with "=" must end with =STATUS, e.g. http:/healthz?full=1=200`},
		{in: "http:=200", wantErr: `invalid check "http:=200"` + syntax},
		{in: "http:/a b", wantErr: `invalid check "http:/a b": path "/a b": expected no spaces, control characters or #`},
		{in: "http:/a\r\nX: y", wantErr: `invalid check "http:/a\r\nX: y": path "/a\r\nX: y": expected no spaces, control characters or #`},
		{in: "http:/a#top", wantErr: `invalid check "http:/a#top": path "/a#top": expected no spaces, control characters or #`},
		{in: "http://rs1/x", wantErr: `invalid check "http://rs1/x": path "//rs1/x": expected a path, not a URL: the check goes to the real's ADDR:PORT`},
		{in: "http:/a%zz", wantErr: `invalid check "http:/a%zz": path "/a%zz": expected a request URI: invalid URL escape "%zz"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseCheck(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseCheck(%q) error = %v\nwant %s", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCheck(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseCheck(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			// String gives back a spec that parses to the same check.
			again, err := ParseCheck(got.String())
			if err != nil || again != got {
				t.Errorf("ParseCheck(%q) = %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

func TestCheckString(t *testing.T) {
	for _, tt := range []struct {
		c    Check
		want string
	}{
		{Check{}, "none"},
		{Check{Kind: CheckTCP}, "tcp"},
		{Check{Kind: CheckHTTP, Path: "/healthz", Status: 200}, "http:/healthz"},
		{Check{Kind: CheckHTTP, Path: "/healthz", Status: 204}, "http:/healthz=204"},
		{Check{Kind: CheckHTTP, Path: "/s?a=b", Status: 200}, "http:/s?a=b=200"},
	} {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.c, got, tt.want)
		}
	}
}

func TestCheckTimingValidate(t *testing.T) {
	ok := DefaultCheckTiming
	if err := ok.Validate(); err != nil {
		t.Fatalf("DefaultCheckTiming.Validate() = %v", err)
	}
	if ok != (CheckTiming{Interval: 2 * time.Second, Timeout: 2 * time.Second, Rise: 2, Fall: 3}) {
		t.Errorf("DefaultCheckTiming = %+v, want HAProxy's inter 2s, rise 2, fall 3 with a 2s timeout", ok)
	}
	with := func(f func(*CheckTiming)) CheckTiming { t := ok; f(&t); return t }
	tests := []struct {
		name    string
		in      CheckTiming
		wantErr string
	}{
		{"timeout equals interval", with(func(t *CheckTiming) { t.Interval, t.Timeout = time.Second, time.Second }), ""},
		{"short", CheckTiming{Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 1, Fall: 1}, ""},
		{"zero interval", with(func(t *CheckTiming) { t.Interval = 0 }),
			"check interval 0s: expected a positive duration, e.g. 2s"},
		{"negative timeout", with(func(t *CheckTiming) { t.Timeout = -time.Second }),
			"check timeout -1s: expected a positive duration, e.g. 2s"},
		{"timeout over interval", with(func(t *CheckTiming) { t.Interval = time.Second }),
			"check timeout 2s exceeds the check interval 1s: expected a timeout no longer than the interval"},
		{"rise 0", with(func(t *CheckTiming) { t.Rise = 0 }),
			"check rise 0: expected at least 1 successful check to mark a real up"},
		{"fall 0", with(func(t *CheckTiming) { t.Fall = 0 }),
			"check fall 0: expected at least 1 failed check to mark a real down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.in.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate(%+v) = %v, want nil", tt.in, err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Fatalf("Validate(%+v) = %v\nwant %s", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestServiceConfigCheck(t *testing.T) {
	base := ServiceConfig{Service: "tcp:198.18.0.10:80", Reals: []string{"198.18.10.11:80"}}
	svc, err := base.Build()
	if err != nil {
		t.Fatal(err)
	}
	if svc.Check != (Check{}) || svc.Reals[0].Down {
		t.Errorf("no check: Build = check %+v, real down %v; want none and up", svc.Check, svc.Reals[0].Down)
	}
	c := base
	c.Check = "http:/healthz=204"
	if svc, err = c.Build(); err != nil {
		t.Fatal(err)
	}
	if want := (Check{Kind: CheckHTTP, Path: "/healthz", Status: 204}); svc.Check != want {
		t.Errorf("Build check = %+v, want %+v", svc.Check, want)
	}
	c.Check = "htp:/x"
	_, err = c.Build()
	if want := `check: invalid check "htp:/x": expected none, tcp, http:/PATH or http:/PATH=STATUS`; err == nil || err.Error() != want {
		t.Errorf("Build error = %v\nwant %s", err, want)
	}
}
