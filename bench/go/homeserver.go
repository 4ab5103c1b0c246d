package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"maunium.net/go/mautrix/id"
)

// homeserver answers the client-server requests the scenario makes (keys/upload, keys/query,
// keys/claim, sendToDevice) from the fixtures, in process: mautrix-go's OlmMachine talks to its
// Client, and each Client's http.Client gets a transport bound to one user. The time spent in
// here is the homeserver's, not mautrix-go's, and the scenario subtracts it from every phase
// (serverTime); reading the response body stays on the client's side of the clock.
type homeserver struct {
	mu sync.Mutex
	// deviceKeys and oneTimeKeys hold each user's fragment of a keys/query and a keys/claim
	// response (`{deviceId: ...}`), spliced into the answers without re-serialising them.
	deviceKeys  map[id.UserID]json.RawMessage
	oneTimeKeys map[id.UserID]json.RawMessage
	// inbox is the to-device events addressed to the one real recipient, as its sync would
	// deliver them.
	inboxUser   id.UserID
	inboxDevice id.DeviceID
	inbox       []json.RawMessage

	serverTime   time.Duration
	toDeviceSize int64
	claims       int
	// claimReturned is when the last keys/claim answer left the homeserver.
	claimReturned time.Time
}

func newHomeserver(f *fixtures, inboxUser id.UserID, inboxDevice id.DeviceID) *homeserver {
	hs := &homeserver{
		deviceKeys:  make(map[id.UserID]json.RawMessage, len(f.Users)),
		oneTimeKeys: make(map[id.UserID]json.RawMessage, len(f.Users)),
		inboxUser:   inboxUser,
		inboxDevice: inboxDevice,
	}
	for _, u := range f.Users {
		hs.deviceKeys[u.UserID] = u.DeviceKeys
		hs.oneTimeKeys[u.UserID] = u.OneTimeKeys
	}
	return hs
}

// meter is what the homeserver counted since the last call: its own time, the bytes of the
// to-device request bodies it received and the keys/claim requests it answered.
type meter struct {
	serverTime    time.Duration
	toDeviceBytes int64
	claims        int
	claimReturned time.Time
}

func (hs *homeserver) takeMeter() meter {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	m := meter{hs.serverTime, hs.toDeviceSize, hs.claims, hs.claimReturned}
	hs.serverTime, hs.toDeviceSize, hs.claims, hs.claimReturned = 0, 0, 0, time.Time{}
	return m
}

// takeInbox hands over the recipient's to-device events received so far.
func (hs *homeserver) takeInbox() []json.RawMessage {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	out := hs.inbox
	hs.inbox = nil
	return out
}

// transport is one user's connection to the homeserver.
type transport struct {
	hs   *homeserver
	user id.UserID
}

func (t transport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	body, err := t.serve(req)
	status := http.StatusOK
	if err != nil {
		status = http.StatusBadRequest
		body, _ = json.Marshal(map[string]string{"errcode": "M_UNRECOGNIZED", "error": err.Error()})
	}
	response := &http.Response{
		StatusCode:    status,
		Status:        http.StatusText(status),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": []string{"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
	t.hs.mu.Lock()
	t.hs.serverTime += time.Since(start)
	if strings.HasSuffix(req.URL.Path, "/keys/claim") {
		t.hs.claimReturned = time.Now()
	}
	t.hs.mu.Unlock()
	return response, nil
}

func (t transport) serve(req *http.Request) ([]byte, error) {
	raw, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	path := req.URL.Path
	switch {
	case strings.HasSuffix(path, "/keys/upload"):
		return t.hs.upload(t.user, raw)
	case strings.HasSuffix(path, "/keys/query"):
		return t.hs.query(raw)
	case strings.HasSuffix(path, "/keys/claim"):
		return t.hs.claim(raw)
	case strings.Contains(path, "/sendToDevice/"):
		return t.hs.sendToDevice(t.user, path, raw)
	}
	return nil, fmt.Errorf("the bench homeserver does not serve %s %s", req.Method, path)
}

// upload keeps a real device's keys so the other machine can query and claim them.
func (hs *homeserver) upload(user id.UserID, raw []byte) ([]byte, error) {
	var body struct {
		DeviceKeys  json.RawMessage            `json:"device_keys"`
		OneTimeKeys map[string]json.RawMessage `json:"one_time_keys"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, fmt.Errorf("keys/upload body: %w", err)
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if len(body.DeviceKeys) > 0 && string(body.DeviceKeys) != "null" {
		var keys struct {
			DeviceID id.DeviceID `json:"device_id"`
		}
		if err := json.Unmarshal(body.DeviceKeys, &keys); err != nil {
			return nil, fmt.Errorf("keys/upload device_keys: %w", err)
		}
		fragment, err := json.Marshal(map[id.DeviceID]json.RawMessage{keys.DeviceID: body.DeviceKeys})
		if err != nil {
			return nil, err
		}
		hs.deviceKeys[user] = fragment
		// One signed one-time key is all a keys/claim hands out, as with the fixtures.
		for keyID, key := range body.OneTimeKeys {
			if strings.HasPrefix(keyID, "signed_curve25519:") {
				fragment, err := json.Marshal(map[id.DeviceID]map[string]json.RawMessage{keys.DeviceID: {keyID: key}})
				if err != nil {
					return nil, err
				}
				hs.oneTimeKeys[user] = fragment
				break
			}
		}
	}
	return fmt.Appendf(nil, `{"one_time_key_counts":{"signed_curve25519":%d}}`, len(body.OneTimeKeys)), nil
}

// responseBody splices the users' fragments into `{"<field>":{user:fragment,...},"failures":{}}`.
func responseBody(field string, users map[id.UserID]json.RawMessage, fragments map[id.UserID]json.RawMessage) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"%s":{`, field)
	first := true
	for user := range users {
		fragment, ok := fragments[user]
		if !ok {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		name, err := json.Marshal(user)
		if err != nil {
			return nil, err
		}
		b.Write(name)
		b.WriteByte(':')
		b.Write(fragment)
	}
	b.WriteString(`},"failures":{}}`)
	return b.Bytes(), nil
}

func (hs *homeserver) query(raw []byte) ([]byte, error) {
	var body struct {
		DeviceKeys map[id.UserID]json.RawMessage `json:"device_keys"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, fmt.Errorf("keys/query body: %w", err)
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return responseBody("device_keys", body.DeviceKeys, hs.deviceKeys)
}

func (hs *homeserver) claim(raw []byte) ([]byte, error) {
	var body struct {
		OneTimeKeys map[id.UserID]json.RawMessage `json:"one_time_keys"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, fmt.Errorf("keys/claim body: %w", err)
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.claims++
	return responseBody("one_time_keys", body.OneTimeKeys, hs.oneTimeKeys)
}

// sendToDevice counts the body's bytes and keeps the message for the real recipient, if any.
func (hs *homeserver) sendToDevice(sender id.UserID, path string, raw []byte) ([]byte, error) {
	parts := strings.Split(path, "/")
	i := len(parts) - 1
	for i > 0 && parts[i-1] != "sendToDevice" {
		i--
	}
	if i == 0 {
		return nil, fmt.Errorf("no event type in %s", path)
	}
	eventType := parts[i]
	var body struct {
		Messages map[id.UserID]map[id.DeviceID]json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, fmt.Errorf("sendToDevice body: %w", err)
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.toDeviceSize += int64(len(raw))
	if content, ok := body.Messages[hs.inboxUser][hs.inboxDevice]; ok {
		evt, err := json.Marshal(map[string]any{"type": eventType, "sender": sender, "content": content})
		if err != nil {
			return nil, err
		}
		hs.inbox = append(hs.inbox, evt)
	}
	return []byte("{}"), nil
}
