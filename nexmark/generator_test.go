package nexmark

import (
	"bytes"
	"context"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/sealflow/sealflow/engine/record"
)

func mustGenerate(t testing.TB, cfg Config, n int) []Event {
	t.Helper()
	evs, err := Generate(cfg, n)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestProportionsAndDistributions(t *testing.T) {
	const n = 1_000_000
	g, err := NewGenerator(DefaultConfig(7))
	if err != nil {
		t.Fatal(err)
	}
	var ev Event
	var kinds [4]int
	var hotAuction, hotBidder, hotSeller, bids, auctions, cat10, inStates, persons int
	var bidBytes, auctionBytes, personBytes int
	var minPrice, maxPrice int64 = math.MaxInt64, 0
	for i := int64(0); i < n; i++ {
		g.Next(&ev)
		kinds[ev.Kind]++
		switch ev.Kind {
		case KindPerson:
			persons++
			p := &ev.Person
			if slices.Contains(Q3States, p.State) {
				inStates++
			}
			if !slices.Contains(USStates, p.State) || !slices.Contains(USCities, p.City) {
				t.Fatalf("event %d: person state %q city %q not from the Nexmark lists", i, p.State, p.City)
			}
			personBytes += 8 + len(p.Name) + len(p.EmailAddress) + len(p.CreditCard) + len(p.City) + len(p.State) + len(p.Extra)
		case KindAuction:
			auctions++
			a := &ev.Auction
			if a.Category < FirstCategoryID || a.Category >= FirstCategoryID+NumCategories {
				t.Fatalf("event %d: category %d out of range", i, a.Category)
			}
			if a.Category == Q3Category {
				cat10++
			}
			if (a.Seller-FirstPersonID)%hotSellerBatch == 0 {
				hotSeller++
			}
			if a.Reserve <= a.InitialBid || a.Expires <= a.DateTime {
				t.Fatalf("event %d: reserve %d initial %d expires %d time %d", i, a.Reserve, a.InitialBid, a.Expires, a.DateTime)
			}
			auctionBytes += 8 + len(a.ItemName) + len(a.Description) + 8*5 + len(a.Extra)
		case KindBid:
			bids++
			b := &ev.Bid
			if (b.Auction-FirstAuctionID)%hotAuctionBatch == 0 {
				hotAuction++
			}
			if (b.Bidder-FirstPersonID)%hotBidderBatch == 1 {
				hotBidder++
			}
			minPrice, maxPrice = min(minPrice, b.Price), max(maxPrice, b.Price)
			bidBytes += 32 + len(b.Extra)
		}
	}
	if kinds[KindPerson] != n/50 || kinds[KindAuction] != 3*n/50 || kinds[KindBid] != 46*n/50 {
		t.Errorf("kinds person/auction/bid = %d/%d/%d, want exactly 1:3:46 per 50", kinds[KindPerson], kinds[KindAuction], kinds[KindBid])
	}
	near := func(name string, got, want, tol float64) {
		t.Helper()
		if math.Abs(got-want) > tol {
			t.Errorf("%s = %.4f, want %.4f ± %.4f", name, got, want, tol)
		}
	}
	// Hot auction with probability 1/2 by construction, plus random picks that land on a batch start.
	near("hot auction fraction", float64(hotAuction)/float64(bids), 0.5, 0.03)
	near("hot bidder fraction", float64(hotBidder)/float64(bids), 0.75, 0.03)
	near("hot seller fraction", float64(hotSeller)/float64(auctions), 0.75, 0.03)
	near("category 10 fraction", float64(cat10)/float64(auctions), 0.2, 0.01)
	near("OR/ID/CA fraction", float64(inStates)/float64(persons), 0.5, 0.02)
	near("avg bid bytes", float64(bidBytes)/float64(bids), 100, 2)
	near("avg auction bytes", float64(auctionBytes)/float64(auctions), 500, 5)
	near("avg person bytes", float64(personBytes)/float64(persons), 200, 5)
	if minPrice < 100 || maxPrice > 100_000_000 || maxPrice < 10_000_000 {
		t.Errorf("bid prices in [%d, %d], want log-uniform within [100, 100000000]", minPrice, maxPrice)
	}
}

func TestDeterminismPerSeed(t *testing.T) {
	a := mustGenerate(t, DefaultConfig(1), 5000)
	b := mustGenerate(t, DefaultConfig(1), 5000)
	c := mustGenerate(t, DefaultConfig(2), 5000)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two generators with seed 1 disagree")
	}
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same > 0 {
		t.Errorf("seeds 1 and 2 produced %d identical events out of %d", same, len(a))
	}
	// Random access and strided generation agree with sequential generation.
	g, _ := NewGenerator(DefaultConfig(1))
	for _, stride := range []int64{1, 3, 7} {
		for start := range stride {
			h := g.Clone()
			h.SetStride(start, stride)
			for n := start; n < int64(len(a)); n += stride {
				var ev Event
				h.Next(&ev)
				if ev != a[n] {
					t.Fatalf("stride %d start %d: event %d differs from sequential generation", stride, start, n)
				}
			}
		}
	}
}

func TestReferencesAndTime(t *testing.T) {
	for _, cfg := range []Config{DefaultConfig(3), {Seed: 4, OutOfOrderGroupSize: 17, EventsPerSecond: 1000}} {
		g, err := NewGenerator(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cfg = g.Config()
		var ev Event
		maxPerson, maxAuction := int64(-1), int64(-1) // highest id created so far
		var lastTime int64 = math.MinInt64
		for n := int64(0); n < 200_000; n++ {
			g.Next(&ev)
			ts := ev.Time()
			if cfg.OutOfOrderGroupSize == 1 && ts < lastTime {
				t.Fatalf("event %d: time %d before previous %d", n, ts, lastTime)
			}
			if wm := g.Watermark(n); ts < wm {
				t.Fatalf("event %d: time %d before the watermark %d", n, ts, wm)
			}
			if want := cfg.BaseTime + n*1000/cfg.EventsPerSecond; cfg.OutOfOrderGroupSize == 1 && ts != want {
				t.Fatalf("event %d: time %d, want %d at %d events/s", n, ts, want, cfg.EventsPerSecond)
			}
			lastTime = max(lastTime, ts)
			// Ids may name entities up to the lead ahead, out of order by at most a group.
			slack := cfg.OutOfOrderGroupSize
			switch ev.Kind {
			case KindPerson:
				maxPerson = max(maxPerson, ev.Person.ID)
			case KindAuction:
				a := ev.Auction
				maxAuction = max(maxAuction, a.ID)
				if a.Seller < FirstPersonID || a.Seller > maxPerson+personIDLead+slack {
					t.Fatalf("event %d: seller %d, persons so far up to %d", n, a.Seller, maxPerson)
				}
			case KindBid:
				b := ev.Bid
				if b.Auction < FirstAuctionID || b.Auction > maxAuction+auctionIDLead+slack ||
					b.Auction < maxAuction-cfg.NumInFlightAuctions-3*slack {
					t.Fatalf("event %d: bid on auction %d, auctions so far up to %d", n, b.Auction, maxAuction)
				}
				if b.Bidder < FirstPersonID || b.Bidder > maxPerson+personIDLead+slack {
					t.Fatalf("event %d: bidder %d, persons so far up to %d", n, b.Bidder, maxPerson)
				}
			}
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{EventsPerSecond: -1}, {HotAuctionRatio: -2}, {AvgBidByteSize: maxExtra + 1}} {
		if _, err := NewGenerator(c); err == nil {
			t.Errorf("NewGenerator(%+v) accepted an invalid config", c)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	evs := mustGenerate(t, DefaultConfig(5), 2000)
	g, _ := NewGenerator(DefaultConfig(5))
	var buf bytes.Buffer
	if err := WriteEvents(context.Background(), &buf, g, 2000); err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(buf.String(), "\n")
	for _, want := range []string{`"type":"person"`, `"id":1000,`, `"emailAddress":`, `"creditCard":`, `"dateTime":1704067200000`} {
		if !strings.Contains(first, want) {
			t.Errorf("first line %s lacks %s", first, want)
		}
	}
	got, err := ReadEvents(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(evs, got) {
		t.Fatal("events read back differ from events written")
	}
}

func TestParseEventErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"type":"bid","auction":1}`, `missing field "bidder"`},
		{`{"auction":1}`, `missing "type"`},
		{`{"type":"lot"}`, `unknown event type "lot"`},
		{`{"type":"person","id":"x"}`, `malformed event`},
		{`not json`, `malformed event`},
	} {
		_, err := ParseEvent([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseEvent(%s) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
	_, err := ReadEvents(strings.NewReader("\n" + `{"type":"bid"}` + "\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("ReadEvents error %v does not name line 2", err)
	}
}

func FuzzParseEvent(f *testing.F) {
	for _, ev := range mustGenerate(f, DefaultConfig(9), 60)[:5] {
		f.Add(AppendJSON(nil, &ev))
	}
	f.Add([]byte(`{"type":"bid","auction":1,"bidder":2,"price":3,"channel":"\u0000","url":"","dateTime":-1,"extra":""}`))
	f.Add([]byte(`{"type":"person"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseEvent(b)
		if err != nil {
			return
		}
		// Whatever parses must survive a round trip unchanged (encoding/json
		// has already replaced invalid UTF-8, so strings are valid).
		again, err := ParseEvent(AppendJSON(nil, &ev))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", AppendJSON(nil, &ev), err)
		}
		if again != ev {
			t.Fatalf("round trip changed %+v into %+v", ev, again)
		}
	})
}

func BenchmarkGenerateRecords(b *testing.B) {
	g, _ := NewGenerator(DefaultConfig(1))
	var ev Event
	rec := record.Record{Values: make([]record.Value, 0, 10)}
	for b.Loop() {
		g.Next(&ev)
		ev.Record(&rec)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkWriteJSON(b *testing.B) {
	g, _ := NewGenerator(DefaultConfig(1))
	var ev Event
	buf := make([]byte, 0, 1024)
	for b.Loop() {
		g.Next(&ev)
		buf = AppendJSON(buf[:0], &ev)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func TestExp10x6(t *testing.T) {
	r := rng{s: 1}
	for i := range 100000 {
		u := r.float64()
		if i == 0 {
			u = 0
		} else if i == 1 {
			u = math.Nextafter(1, 0)
		}
		want := math.Pow(10, 6*u)
		if got := exp10x6(u); math.Abs(got-want) > want*1e-12 {
			t.Fatalf("exp10x6(%v) = %v, want %v", u, got, want)
		}
	}
}

func TestAppendValueFloats(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		want string
	}{
		{0, "0"}, {908, "908"}, {5249702.788, "5249702.788"}, {0.908 * 7, "6.356"}, {1e21, "1e+21"},
		{1e-7, "1e-07"}, {-2.5, "-2.5"}, {math.NaN(), "null"}, {math.Inf(1), "null"},
	} {
		if got := string(AppendValue(nil, record.Float(tc.f))); got != tc.want {
			t.Errorf("AppendValue(%v) = %s, want %s", tc.f, got, tc.want)
		}
	}
}
