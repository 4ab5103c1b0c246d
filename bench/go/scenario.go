package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// The same users, rooms and message as bench/scenario.ts.
const (
	senderUser      id.UserID   = "@sender:bench.example"
	senderDevice    id.DeviceID = "SENDERDEVICE"
	recipientUser   id.UserID   = "@recipient:bench.example"
	recipientDevice id.DeviceID = "RECIPIENTDEVICE"
	room            id.RoomID   = "!bench:bench.example"
	withheldRoom    id.RoomID   = "!bench-withheld:bench.example"
	messageBody                 = "hello, ten thousand devices"
)

var phases = []string{"keys_query", "olm_sessions", "share_new", "share_existing", "encrypt_decrypt", "share_withheld"}

// sample is one measured phase of one repetition.
type sample struct {
	elapsed time.Duration
	peakMB  float64
	bytes   int64
}

// sessionClock wraps the machine's store to note when the last Olm session of a keys/claim was
// stored: mautrix-go creates the sessions inside ShareGroupSession, and this is where the
// olm_sessions phase of that call ends and the share resumes. Every other call goes straight
// to the store.
type sessionClock struct {
	crypto.Store
	mu    sync.Mutex
	added time.Time
}

func (s *sessionClock) AddSession(ctx context.Context, key id.SenderKey, session *crypto.OlmSession) error {
	err := s.Store.AddSession(ctx, key, session)
	s.mu.Lock()
	s.added = time.Now()
	s.mu.Unlock()
	return err
}

func (s *sessionClock) lastAdded() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.added
}

type machine struct {
	mach  *crypto.OlmMachine
	clock *sessionClock
	close func()
}

func openMachine(ctx context.Context, hs *homeserver, setup setup, dir string, user id.UserID, device id.DeviceID, state crypto.StateStore) (*machine, error) {
	store, closeStore, err := openStore(ctx, setup.store, dir, user, device, setup.runID)
	if err != nil {
		return nil, err
	}
	client, err := mautrix.NewClient("https://bench.example", user, "bench-token")
	if err != nil {
		closeStore()
		return nil, err
	}
	client.DeviceID = device
	client.Client = &http.Client{Transport: transport{hs: hs, user: user}}
	clock := &sessionClock{Store: store}
	// Silent, unless MCN_BENCH_GO_LOG names a level (debug, trace) to see why a run failed.
	logger := zerolog.Nop()
	if level, err := zerolog.ParseLevel(os.Getenv("MCN_BENCH_GO_LOG")); err == nil && level != zerolog.NoLevel {
		logger = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr}).Level(level).With().Timestamp().Str("user", string(user)).Logger()
	}
	mach := crypto.NewOlmMachine(client, &logger, clock, state)
	// As mautrix-go's bridges configure their machine (bridgev2/matrix/crypto.go).
	mach.DisableSharedGroupSessionTracking = true
	if err := mach.Load(ctx); err != nil {
		closeStore()
		return nil, fmt.Errorf("load %s: %w", user, err)
	}
	return &machine{mach: mach, clock: clock, close: closeStore}, nil
}

// newState is the room state both machines read: the bench's rooms are encrypted (Megolm, the
// default rotation settings).
func newState(ctx context.Context) (*mautrix.MemoryStateStore, error) {
	state := mautrix.NewMemoryStateStore().(*mautrix.MemoryStateStore)
	for _, r := range []id.RoomID{room, withheldRoom} {
		if err := state.SetEncryptionEvent(ctx, r, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
			return nil, err
		}
	}
	return state, nil
}

// measure runs work with a fresh peak-RSS mark and returns its wall time minus the homeserver's
// time, with what the homeserver counted.
func measure(hs *homeserver, work func() error) (sample, meter, error) {
	runtime.GC()
	resetPeak()
	hs.takeMeter()
	start := time.Now()
	err := work()
	elapsed := time.Since(start)
	m := hs.takeMeter()
	return sample{elapsed: elapsed - m.serverTime, peakMB: peakMB(), bytes: m.toDeviceBytes}, m, err
}

// oneRep runs every phase on new machines and returns the RSS before they were opened and one
// sample per phase.
func oneRep(ctx context.Context, f *fixtures, setup setup, rep int, progress func(string)) (float64, []sample, error) {
	dir, err := os.MkdirTemp(setup.workdir, fmt.Sprintf("mautrix-go-%s-", setup.store))
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(dir)
	setup.runID = fmt.Sprintf("%d-%d-%d", os.Getpid(), rep, time.Now().UnixNano())
	base := currentMB()
	hs := newHomeserver(f, recipientUser, recipientDevice)
	state, err := newState(ctx)
	if err != nil {
		return 0, nil, err
	}
	sender, err := openMachine(ctx, hs, setup, filepath.Join(dir, "sender"), senderUser, senderDevice, state)
	if err != nil {
		return 0, nil, err
	}
	defer sender.close()
	recipient, err := openMachine(ctx, hs, setup, filepath.Join(dir, "recipient"), recipientUser, recipientDevice, state)
	if err != nil {
		return 0, nil, err
	}
	defer recipient.close()
	for _, m := range []*machine{sender, recipient} {
		if err := m.mach.ShareKeys(ctx, 0); err != nil {
			return 0, nil, fmt.Errorf("upload keys: %w", err)
		}
	}
	// Settle the query of our own user before the measured one.
	if _, err := sender.mach.FetchKeys(ctx, []id.UserID{senderUser}, true); err != nil {
		return 0, nil, err
	}
	users := make([]id.UserID, 0, len(f.Users)+1)
	for _, u := range f.Users {
		users = append(users, u.UserID)
	}
	users = append(users, recipientUser)
	samples := make([]sample, 0, len(phases))

	progress("keys_query")
	s, _, err := measure(hs, func() error {
		devices, err := sender.mach.FetchKeys(ctx, users, true)
		if err == nil && len(devices) != len(users) {
			err = fmt.Errorf("keys/query: %d of %d users have devices", len(devices), len(users))
		}
		return err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("keys_query: %w", err)
	}
	samples = append(samples, s)

	// mautrix-go claims one-time keys and creates the Olm sessions inside ShareGroupSession.
	// The olm_sessions phase is the part of that call from the moment the keys/claim answer
	// leaves the homeserver until the last session is stored (parsing the answer, checking each
	// key's signature, creating and storing each session); share_new is the rest of the call
	// (finding the devices without a session and asking for their keys, then encrypting the
	// room key for every device and sending it), both without the homeserver's own time.
	progress("olm_sessions")
	share, m, err := measure(hs, func() error { return sender.mach.ShareGroupSession(ctx, room, users) })
	if err != nil {
		return 0, nil, fmt.Errorf("share_new: %w", err)
	}
	if m.claims != 1 || m.claimReturned.IsZero() {
		return 0, nil, fmt.Errorf("share_new: %d keys/claim requests, expected 1", m.claims)
	}
	olm := sender.clock.lastAdded().Sub(m.claimReturned)
	if olm <= 0 {
		return 0, nil, errors.New("olm_sessions: no Olm session was stored after the keys/claim answer")
	}
	samples = append(samples, sample{elapsed: olm, peakMB: share.peakMB})
	progress("share_new")
	share.elapsed -= olm
	samples = append(samples, share)

	progress("share_existing")
	if err := sender.mach.CryptoStore.RemoveOutboundGroupSession(ctx, room); err != nil {
		return 0, nil, err
	}
	s, m, err = measure(hs, func() error { return sender.mach.ShareGroupSession(ctx, room, users) })
	if err != nil {
		return 0, nil, fmt.Errorf("share_existing: %w", err)
	}
	if m.claims != 0 {
		return 0, nil, fmt.Errorf("share_existing: %d keys/claim requests over existing sessions", m.claims)
	}
	samples = append(samples, s)

	progress("encrypt_decrypt")
	inbox := hs.takeInbox()
	if len(inbox) != 2 {
		return 0, nil, fmt.Errorf("the recipient got %d room keys, expected 2", len(inbox))
	}
	for _, raw := range inbox {
		var evt event.Event
		if err := json.Unmarshal(raw, &evt); err != nil {
			return 0, nil, err
		}
		// As mautrix-go's syncer marks to-device events; the decrypted event's type takes it.
		evt.Type.Class = event.ToDeviceEventType
		if err := evt.Content.ParseRaw(evt.Type); err != nil {
			return 0, nil, err
		}
		evt.ToUserID, evt.ToDeviceID = recipientUser, recipientDevice
		recipient.mach.HandleToDeviceEvent(ctx, &evt)
	}
	var decrypted *event.Event
	s, _, err = measure(hs, func() error {
		content, err := sender.mach.EncryptMegolmEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: messageBody})
		if err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		evt := &event.Event{
			Type:      event.EventEncrypted,
			Sender:    senderUser,
			ID:        id.EventID(fmt.Sprintf("$bench%d", rep)),
			Timestamp: 1,
			RoomID:    room,
			Content:   event.Content{Parsed: content},
		}
		decrypted, err = recipient.mach.DecryptMegolmEvent(ctx, evt)
		if err != nil {
			return fmt.Errorf("the recipient cannot decrypt the message: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("encrypt_decrypt: %w", err)
	}
	if err := checkDecrypted(decrypted); err != nil {
		return 0, nil, fmt.Errorf("encrypt_decrypt: %w", err)
	}
	samples = append(samples, s)

	// withheld: 10% blacklisted, 10% unverified, the rest verified (trustOf in
	// bench/scenario.ts, over the devices in the same order); only verified devices get the key.
	progress("share_withheld")
	index := 0
	for _, u := range f.Users {
		var devices map[id.DeviceID]json.RawMessage
		if err := json.Unmarshal(u.DeviceKeys, &devices); err != nil {
			return 0, nil, err
		}
		ids := make([]string, 0, len(devices))
		for d := range devices {
			ids = append(ids, string(d))
		}
		sort.Strings(ids)
		for _, d := range ids {
			if err := setTrust(ctx, sender.mach, u.UserID, id.DeviceID(d), trustOf(index)); err != nil {
				return 0, nil, err
			}
			index++
		}
	}
	if err := setTrust(ctx, sender.mach, recipientUser, recipientDevice, id.TrustStateVerified); err != nil {
		return 0, nil, err
	}
	sender.mach.SendKeysMinTrust = id.TrustStateVerified
	s, _, err = measure(hs, func() error { return sender.mach.ShareGroupSession(ctx, withheldRoom, users) })
	if err != nil {
		return 0, nil, fmt.Errorf("share_withheld: %w", err)
	}
	samples = append(samples, s)
	return base, samples, nil
}

// checkDecrypted fails unless the event is the message the sender encrypted.
func checkDecrypted(decrypted *event.Event) error {
	if decrypted.Type != event.EventMessage {
		return fmt.Errorf("the recipient decrypted a %s event", decrypted.Type.Type)
	}
	if decrypted.Content.Parsed == nil {
		if err := decrypted.Content.ParseRaw(decrypted.Type); err != nil {
			return fmt.Errorf("the decrypted event does not parse: %w", err)
		}
	}
	if msg, ok := decrypted.Content.Parsed.(*event.MessageEventContent); !ok || msg.Body != messageBody {
		return fmt.Errorf("the recipient decrypted something else: %s", decrypted.Content.VeryRaw)
	}
	return nil
}

func trustOf(index int) id.TrustState {
	switch index % 10 {
	case 0:
		return id.TrustStateBlacklisted
	case 1:
		return id.TrustStateUnset
	default:
		return id.TrustStateVerified
	}
}

// setTrust is how a mautrix-go program verifies or blacklists a device: it saves the device
// with its trust state.
func setTrust(ctx context.Context, mach *crypto.OlmMachine, user id.UserID, device id.DeviceID, trust id.TrustState) error {
	d, err := mach.CryptoStore.GetDevice(ctx, user, device)
	if err != nil {
		return err
	}
	if d == nil {
		return fmt.Errorf("unknown device %s %s", user, device)
	}
	d.Trust = trust
	return mach.CryptoStore.PutDevice(ctx, user, d)
}
