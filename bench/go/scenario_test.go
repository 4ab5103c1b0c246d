package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// testFixtures makes n fixture devices the way real clients publish them: each is a mautrix-go
// machine that uploads its keys to a homeserver, whose fragments become the fixture users.
func testFixtures(t *testing.T, n int) *fixtures {
	t.Helper()
	ctx := context.Background()
	hs := newHomeserver(&fixtures{}, "", "")
	f := &fixtures{Devices: n}
	state := testState(t)
	for i := range n {
		user := id.UserID(fmt.Sprintf("@bench%d:bench.example", i))
		m, err := openMachine(ctx, hs, setup{store: "memory"}, "", user, "BENCHDEV0", state)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.mach.ShareKeys(ctx, 0); err != nil {
			t.Fatal(err)
		}
		m.close()
		f.Users = append(f.Users, fixtureUser{UserID: user, DeviceKeys: hs.deviceKeys[user], OneTimeKeys: hs.oneTimeKeys[user]})
	}
	return f
}

func testState(t *testing.T) *mautrix.MemoryStateStore {
	t.Helper()
	state, err := newState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return state
}

func TestEveryPhaseOnEveryLocalStore(t *testing.T) {
	f := testFixtures(t, 4)
	for _, store := range []string{"memory", "sqlite"} {
		t.Run(store, func(t *testing.T) {
			s := setup{store: store, n: f.Devices, devicesPerUser: 1, reps: 1, workdir: t.TempDir()}
			var seen []string
			_, samples, err := oneRep(context.Background(), f, s, 0, func(phase string) { seen = append(seen, phase) })
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(seen) != fmt.Sprint(phases) || len(samples) != len(phases) {
				t.Fatalf("phases %v, %d samples; want %v", seen, len(samples), phases)
			}
			for i, s := range samples {
				if s.elapsed <= 0 || s.peakMB <= 0 {
					t.Errorf("%s: %+v", phases[i], s)
				}
			}
			// Every share sends the room key to the 5 devices (4 fixtures and the recipient).
			for _, i := range []int{2, 3, 5} {
				if samples[i].bytes < 5*300 {
					t.Errorf("%s sent %d bytes of to-device messages", phases[i], samples[i].bytes)
				}
			}
			for _, i := range []int{0, 1, 4} {
				if samples[i].bytes != 0 {
					t.Errorf("%s sent %d bytes of to-device messages", phases[i], samples[i].bytes)
				}
			}
			entries, err := os.ReadDir(s.workdir)
			if err != nil || len(entries) != 0 {
				t.Errorf("the run left %d entries in its workdir (%v)", len(entries), err)
			}
		})
	}
}

func TestCheckDecryptedRejectsAnotherMessage(t *testing.T) {
	message := func(body string) *event.Event {
		return &event.Event{Type: event.EventMessage, Content: event.Content{Parsed: &event.MessageEventContent{MsgType: event.MsgText, Body: body}}}
	}
	if err := checkDecrypted(message(messageBody)); err != nil {
		t.Fatalf("the sent message was rejected: %v", err)
	}
	if err := checkDecrypted(message("something else")); err == nil {
		t.Fatal("another message passed the check")
	}
	raw := &event.Event{Type: event.EventMessage, Content: event.Content{VeryRaw: json.RawMessage(`{"msgtype":"m.text","body":"` + messageBody + `"}`)}}
	if err := checkDecrypted(raw); err != nil {
		t.Fatalf("the sent message, unparsed, was rejected: %v", err)
	}
	if err := checkDecrypted(&event.Event{Type: event.EventReaction}); err == nil {
		t.Fatal("a reaction passed the check")
	}
}
