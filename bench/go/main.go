// Command mautrix-bench runs the mass-recipient scenario of `npm run bench` (bench/scenario.ts)
// on mautrix-go's crypto.OlmMachine (goolm, built with -tags goolm), with the fixtures the Node
// driver wrote and an in-process homeserver that answers from them (homeserver.go). It prints
// `{"rep","phase"}` lines as it goes, then the runs as one JSON array, in the shape of
// bench/results/latest.json.
//
//	mautrix-bench --fixtures FILE --store memory|sqlite|postgres --n N --devices-per-user K --reps R --workdir DIR
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"maunium.net/go/mautrix/id"
)

type fixtureUser struct {
	UserID      id.UserID       `json:"userId"`
	DeviceKeys  json.RawMessage `json:"deviceKeys"`
	OneTimeKeys json.RawMessage `json:"oneTimeKeys"`
}

// fixtures is the file bench/rust/src/fixtures.rs writes.
type fixtures struct {
	Devices int           `json:"devices"`
	Users   []fixtureUser `json:"users"`
}

type setup struct {
	store          string
	n              int
	devicesPerUser int
	reps           int
	workdir        string
	// runID makes each repetition's account new in a shared database.
	runID string
}

// run is one entry of `runs` in bench/results/latest.json (bench/results.ts, Run).
type run struct {
	Impl              string    `json:"impl"`
	Store             string    `json:"store"`
	N                 int       `json:"n"`
	DevicesPerUser    int       `json:"devicesPerUser"`
	Phase             string    `json:"phase"`
	WallMs            float64   `json:"wallMs"`
	UsPerDevice       float64   `json:"usPerDevice"`
	PeakRssMb         float64   `json:"peakRssMb"`
	RssBaseMb         float64   `json:"rssBaseMb"`
	ToDeviceBytes     int64     `json:"toDeviceBytes"`
	MaxEventLoopDelay *float64  `json:"maxEventLoopDelayMs"`
	Reps              int       `json:"reps"`
	MinMs             float64   `json:"minMs"`
	MaxMs             float64   `json:"maxMs"`
	RepMs             []float64 `json:"repMs"`
	Devices           int       `json:"devices"`
	Cores             int       `json:"cores"`
}

func statusKB(field string) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, field) {
			parts := strings.Fields(line)
			if len(parts) >= 2 {
				v, _ := strconv.ParseFloat(parts[1], 64)
				return v
			}
		}
	}
	return 0
}

// resetPeak sets the peak RSS (VmHWM) to the current RSS, so peakMB covers one phase.
func resetPeak() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

func peakMB() float64    { return statusKB("VmHWM:") / 1024 }
func currentMB() float64 { return statusKB("VmRSS:") / 1024 }

func ms(d time.Duration) float64 { return d.Seconds() * 1e3 }

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "mautrix-go: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	var s setup
	fixturesPath := flag.String("fixtures", "", "fixture file written by the Rust bench binary")
	flag.StringVar(&s.store, "store", "memory", "memory, sqlite or postgres")
	flag.IntVar(&s.n, "n", 0, "fixture devices (N)")
	flag.IntVar(&s.devicesPerUser, "devices-per-user", 1, "devices per fixture user")
	flag.IntVar(&s.reps, "reps", 1, "repetitions")
	flag.StringVar(&s.workdir, "workdir", os.TempDir(), "folder for the stores")
	flag.Parse()
	if *fixturesPath == "" || s.n <= 0 || s.reps <= 0 {
		flag.Usage()
		os.Exit(2)
	}
	text, err := os.ReadFile(*fixturesPath)
	if err != nil {
		fail("%v", err)
	}
	var f fixtures
	if err := json.Unmarshal(text, &f); err != nil {
		fail("fixtures: %v", err)
	}
	// The fixtures are parsed: let the collector have the file's text before the run.
	text = nil
	ctx := context.Background()
	out := json.NewEncoder(os.Stdout)
	var bases []float64
	var reps [][]sample
	for rep := 0; rep < s.reps; rep++ {
		base, samples, err := oneRep(ctx, &f, s, rep, func(phase string) {
			_ = out.Encode(map[string]any{"rep": rep, "phase": phase})
		})
		if err != nil {
			fail("%s N=%d: %v", s.store, s.n, err)
		}
		bases = append(bases, base)
		reps = append(reps, samples)
	}
	devices := f.Devices + 1
	base := bases[0]
	for _, b := range bases {
		base = min(base, b)
	}
	runs := make([]run, 0, len(phases))
	for i, phase := range phases {
		times := make([]float64, len(reps))
		r := run{Impl: "mautrix-go", Store: s.store, N: s.n, DevicesPerUser: s.devicesPerUser, Phase: phase, RssBaseMb: base,
			Reps: len(reps), Devices: devices, Cores: runtime.GOMAXPROCS(0), RepMs: make([]float64, len(reps))}
		for j, samples := range reps {
			times[j] = ms(samples[i].elapsed)
			r.RepMs[j] = times[j]
			r.PeakRssMb = max(r.PeakRssMb, samples[i].peakMB)
			r.ToDeviceBytes = max(r.ToDeviceBytes, samples[i].bytes)
		}
		sort.Float64s(times)
		mid := len(times) / 2
		r.WallMs = times[mid]
		if len(times)%2 == 0 {
			r.WallMs = (times[mid-1] + times[mid]) / 2
		}
		r.MinMs, r.MaxMs = times[0], times[len(times)-1]
		r.UsPerDevice = r.WallMs * 1e3 / float64(devices)
		runs = append(runs, r)
	}
	if err := out.Encode(runs); err != nil {
		fail("%v", err)
	}
}
