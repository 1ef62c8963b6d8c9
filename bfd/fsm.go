package bfd

import "time"

// slowTx is the least Desired Min TX Interval a session advertises while it
// is not Up (RFC 5880 section 6.8.3: not less than one second).
const slowTx = time.Second

// fsm is one session's state (RFC 5880 section 6.8.1's variables) and its
// reception, timer and transmission rules (sections 6.8.3 to 6.8.7). It is
// pure: the time is an argument, the caller sends and sets timers.
type fsm struct {
	passive  bool          // send nothing before the remote has (section 6.1)
	interval time.Duration // Desired Min TX and Required Min RX once Up
	mult     uint8         // our Detect Mult

	state      State
	diag       Diag
	localDisc  uint32
	remoteDisc uint32 // 0: no remote known (never heard, or its detection time passed)

	remoteState     State
	remoteMinRx     time.Duration // what the remote wants at most as often; 0: send nothing periodic
	remoteDesiredTx time.Duration
	remoteMult      uint8
	remoteDemand    bool
	lastRx          time.Time // the last valid packet; the detection timer runs from it

	advTx     time.Duration // the Desired Min TX Interval advertised
	poll      bool          // a poll sequence runs: our packets carry P until a Final comes
	sendFinal bool          // the next packet carries F (answers a Poll)
}

func newFSM(disc uint32, interval time.Duration, mult uint8, passive bool) *fsm {
	f := &fsm{passive: passive, interval: interval, mult: mult, state: Down, localDisc: disc,
		remoteState: Down, remoteMinRx: time.Microsecond} // section 6.8.1: RemoteMinRxInterval starts at 1 µs
	f.advTx = f.wantTx()
	return f
}

// wantTx is the Desired Min TX Interval for the current state.
func (f *fsm) wantTx() time.Duration {
	if f.state == Up {
		return f.interval
	}
	return max(f.interval, slowTx)
}

// receive applies a valid packet selected for this session (section 6.8.6).
// changed: the state changed; reply: send a packet now (a Final, or news of
// the change).
func (f *fsm) receive(c Control, now time.Time) (changed, reply bool) {
	f.remoteDisc = c.MyDisc
	f.remoteState = c.State
	f.remoteDemand = c.Demand
	f.remoteMinRx = time.Duration(c.MinRx) * time.Microsecond
	f.remoteDesiredTx = time.Duration(c.DesiredTx) * time.Microsecond
	f.remoteMult = c.DetectMult
	f.lastRx = now
	if c.Final {
		f.poll = false
	}
	if f.state == AdminDown {
		return false, false
	}
	old := f.state
	if c.State == AdminDown {
		if f.state != Down {
			f.state, f.diag = Down, DiagNeighborDown
		}
	} else {
		switch f.state {
		case Down:
			switch c.State {
			case Down:
				f.state = Init
			case Init:
				f.state = Up
			}
		case Init:
			if c.State == Init || c.State == Up {
				f.state = Up
			}
		case Up:
			if c.State == Down {
				f.state, f.diag = Down, DiagNeighborDown
			}
		}
	}
	if c.Poll {
		f.sendFinal = true
	}
	changed = f.state != old
	if changed {
		f.setTx()
	}
	return changed, changed || c.Poll
}

// setTx advertises the state's Desired Min TX Interval; a change starts a
// poll sequence (section 6.8.3). The interval only rises when the session
// leaves Up, where the rule that a higher one waits for the poll's end does
// not apply, and a lower one may take effect at once: so it does.
func (f *fsm) setTx() {
	if w := f.wantTx(); w != f.advTx {
		f.advTx = w
		f.poll = f.remoteDisc != 0
	}
}

// detectTime is the remote's Detect Mult times the larger of our Required
// Min RX Interval and its Desired Min TX Interval (section 6.8.4).
func (f *fsm) detectTime() time.Duration {
	return time.Duration(f.remoteMult) * max(f.interval, f.remoteDesiredTx)
}

// deadline is when the session goes down if nothing more arrives; zero when
// the detection timer is not running (no remote, or Down).
func (f *fsm) deadline() time.Time {
	if f.remoteDisc == 0 || (f.state != Init && f.state != Up) {
		return time.Time{}
	}
	return f.lastRx.Add(f.detectTime())
}

// expire applies the detection timer at now (section 6.8.4): true if the
// session went down.
func (f *fsm) expire(now time.Time) bool {
	d := f.deadline()
	if d.IsZero() || now.Before(d) {
		return false
	}
	f.state, f.diag = Down, DiagExpired
	f.remoteDisc = 0
	f.remoteState = Down
	f.remoteMinRx = time.Microsecond
	f.poll = false
	f.setTx()
	return true
}

// txInterval is the periodic transmission interval before jitter
// (section 6.8.7); 0: send nothing periodically (passive and no remote
// yet, or the remote asked for none, or it is in demand mode with both Up).
func (f *fsm) txInterval() time.Duration {
	if f.passive && f.remoteDisc == 0 {
		return 0
	}
	if f.remoteMinRx == 0 {
		return 0
	}
	if f.remoteDemand && f.state == Up && f.remoteState == Up && !f.poll {
		return 0
	}
	return max(f.advTx, f.remoteMinRx)
}

// packet is the next Control packet to send; it takes the pending Final.
func (f *fsm) packet() Control {
	c := Control{
		Diag:       f.diag,
		State:      f.state,
		Poll:       f.poll && !f.sendFinal,
		Final:      f.sendFinal,
		DetectMult: f.mult,
		MyDisc:     f.localDisc,
		YourDisc:   f.remoteDisc,
		DesiredTx:  uint32(f.advTx / time.Microsecond),
		MinRx:      uint32(f.interval / time.Microsecond),
	}
	f.sendFinal = false
	return c
}

// adminDown takes the session administratively down (holdfast stops): the
// packet to tell the remote, if there is one to tell.
func (f *fsm) adminDown() (Control, bool) {
	f.state, f.diag = AdminDown, DiagAdminDown
	f.poll = false
	return f.packet(), f.remoteDisc != 0
}
