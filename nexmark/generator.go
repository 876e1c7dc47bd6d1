package nexmark

import (
	"fmt"
	"math"
	"math/bits"
	"strconv"
)

// Proportions of the Nexmark model: in every run of ProportionDenominator
// consecutive event ids, the first PersonProportion are persons, the next
// AuctionProportion are auctions and the rest are bids.
const (
	PersonProportion      = 1
	AuctionProportion     = 3
	BidProportion         = 46
	ProportionDenominator = PersonProportion + AuctionProportion + BidProportion
)

// Base ids, as in the Nexmark generator.
const (
	FirstPersonID   = 1000
	FirstAuctionID  = 1000
	FirstCategoryID = 10
	NumCategories   = 5
)

// Constants of the model that are not configurable in Beam either.
const (
	personIDLead     = 10  // yet-to-be-created person ids a bid or auction may name
	auctionIDLead    = 10  // yet-to-be-created auction ids a bid may name
	hotSellerBatch   = 100 // HOT_SELLER_RATIO: hot seller is the first of the last 100 persons
	hotAuctionBatch  = 100 // HOT_AUCTION_RATIO
	hotBidderBatch   = 100 // HOT_BIDDER_RATIO
	hotChannelsRatio = 2
	channelsNumber   = 10000
)

// The standard Nexmark value lists.
var (
	// USStates are the states persons live in.
	USStates = []string{"AZ", "CA", "ID", "OR", "WA", "WY"}
	// USCities are the cities persons live in (drawn independently of the state, as in Nexmark).
	USCities = []string{"Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend",
		"Redmond", "Seattle", "Kent", "Cheyenne"}
	// FirstNames and LastNames make up person names.
	FirstNames = []string{"Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah",
		"Deiter", "Walter"}
	// LastNames make up person names with FirstNames.
	LastNames   = []string{"Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"}
	hotChannels = []string{"Google", "Facebook", "Baidu", "Apple"}
)

// Config parameterises the generator. The zero value of every field means the
// Nexmark default; use DefaultConfig to see them.
type Config struct {
	// Seed selects the random stream; equal seeds give equal events.
	Seed int64
	// EventsPerSecond is the rate at which event time advances: event n has
	// time BaseTime + n*1000/EventsPerSecond ms. Default 10,000 (Beam's
	// firstEventRate).
	EventsPerSecond int64
	// BaseTime is the event time of event 0 in epoch ms. Default
	// 1,704,067,200,000 (2024-01-01T00:00:00Z), fixed so runs are reproducible.
	BaseTime int64
	// NumActivePeople is how many recent persons bids and auctions refer to
	// (default 1000).
	NumActivePeople int64
	// NumInFlightAuctions is how many recent auctions bids refer to (default 100).
	NumInFlightAuctions int64
	// HotAuctionRatio: a bid is for a hot auction with probability 1-1/ratio (default 2).
	HotAuctionRatio int64
	// HotSellersRatio: an auction is by a hot seller with probability 1-1/ratio (default 4).
	HotSellersRatio int64
	// HotBiddersRatio: a bid is by a hot bidder with probability 1-1/ratio (default 4).
	HotBiddersRatio int64
	// Average sizes in bytes, reached by padding events with "extra" (defaults 200, 500, 100).
	AvgPersonByteSize, AvgAuctionByteSize, AvgBidByteSize int64
	// OutOfOrderGroupSize shuffles event ids within groups of this size (default 1: in order).
	OutOfOrderGroupSize int64
}

// DefaultConfig returns the Nexmark default configuration with the given seed.
func DefaultConfig(seed int64) Config {
	return Config{Seed: seed}.withDefaults()
}

func (c Config) withDefaults() Config {
	def := func(p *int64, v int64) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.EventsPerSecond, 10000)
	def(&c.BaseTime, 1_704_067_200_000)
	def(&c.NumActivePeople, 1000)
	def(&c.NumInFlightAuctions, 100)
	def(&c.HotAuctionRatio, 2)
	def(&c.HotSellersRatio, 4)
	def(&c.HotBiddersRatio, 4)
	def(&c.AvgPersonByteSize, 200)
	def(&c.AvgAuctionByteSize, 500)
	def(&c.AvgBidByteSize, 100)
	def(&c.OutOfOrderGroupSize, 1)
	return c
}

// Validate reports the first field of c that is out of range.
func (c Config) Validate() error {
	c = c.withDefaults()
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"EventsPerSecond", c.EventsPerSecond}, {"NumActivePeople", c.NumActivePeople},
		{"NumInFlightAuctions", c.NumInFlightAuctions}, {"HotAuctionRatio", c.HotAuctionRatio},
		{"HotSellersRatio", c.HotSellersRatio}, {"HotBiddersRatio", c.HotBiddersRatio},
		{"AvgPersonByteSize", c.AvgPersonByteSize}, {"AvgAuctionByteSize", c.AvgAuctionByteSize},
		{"AvgBidByteSize", c.AvgBidByteSize}, {"OutOfOrderGroupSize", c.OutOfOrderGroupSize},
	} {
		if f.v < 0 {
			return fmt.Errorf("nexmark config: %s is %d, want a positive number (0 for the default)", f.name, f.v)
		}
	}
	if c.AvgPersonByteSize > maxExtra || c.AvgAuctionByteSize > maxExtra || c.AvgBidByteSize > maxExtra {
		return fmt.Errorf("nexmark config: average byte sizes must be at most %d", maxExtra)
	}
	return nil
}

// Pools of random characters. Strings of the model are substrings of these
// pools at random offsets with random lengths: the length distribution and the
// per-character distribution are those of Nexmark (letters a..z, with the
// special character at probability 1/13 in nextString), while a bid costs no
// allocation. DESIGN: Nexmark builds every string from fresh random draws;
// that dominates its cost (~100 random draws per bid), and no query reads
// the contents of these strings.
const (
	poolSize = 1 << 16
	maxExtra = 4096
)

// Generator produces Nexmark events. It is not safe for concurrent use; give
// each goroutine its own (they are cheap once the shared tables are built).
type Generator struct {
	cfg          Config
	seedMix      uint64
	letters      string // a..z only (nextExactString, extra)
	spaced       string // a..z with ' ' at 1/13 (nextString)
	names        []string
	channelNames []string
	channelURLs  []string
	hotURLs      []string
	next, step   int64
	interEventUs float64
	numEvForAuct int64
}

// NewGenerator returns a generator that starts at event number 0. It fails if
// cfg is invalid.
func NewGenerator(cfg Config) (*Generator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	g := &Generator{cfg: cfg, step: 1}
	g.seedMix = splitmix(uint64(cfg.Seed) ^ 0x6e65786d61726b) // "nexmark"
	g.numEvForAuct = cfg.NumInFlightAuctions * ProportionDenominator / AuctionProportion
	r := rng{s: g.seedMix}
	g.letters = r.pool(poolSize+maxExtra, 0)
	g.spaced = r.pool(poolSize+maxExtra, ' ')
	underscored := r.pool(poolSize+maxExtra, '_')
	for _, f := range FirstNames {
		for _, l := range LastNames {
			g.names = append(g.names, f+" "+l)
		}
	}
	baseURL := func() string {
		s := func() string {
			n := 3 + int(r.intn(5-3))
			o := int(r.intn(poolSize))
			return underscored[o : o+n]
		}
		return "https://www.nexmark.com/" + s() + "/" + s() + "/" + s() + "/item.htm?query=1"
	}
	for range hotChannels {
		g.hotURLs = append(g.hotURLs, baseURL())
	}
	g.channelNames = make([]string, channelsNumber)
	g.channelURLs = make([]string, channelsNumber)
	for i := range channelsNumber {
		g.channelNames[i] = "channel-" + strconv.Itoa(i)
		u := baseURL()
		if r.intn(10) > 0 {
			rev := int32(bits.Reverse32(uint32(i)))
			if rev < 0 {
				rev = -rev
			}
			u += "&channel_id=" + strconv.Itoa(int(rev))
		}
		g.channelURLs[i] = u
	}
	return g, nil
}

// Config returns the generator's configuration with defaults filled in.
func (g *Generator) Config() Config { return g.cfg }

// Clone returns a generator that shares g's tables (cheap) and is positioned
// like g. Use it to give parallel sources their own generator.
func (g *Generator) Clone() *Generator {
	c := *g
	return &c
}

// SetStride positions the generator so that Next produces event numbers start,
// start+step, start+2*step, ...: parallel source i of p uses SetStride(i, p), so
// that all sources advance through event time together.
func (g *Generator) SetStride(start, step int64) {
	if step < 1 {
		step = 1
	}
	g.next, g.step = start, step
}

// Position returns the event number that Next produces next.
func (g *Generator) Position() int64 { return g.next }

// Next fills ev with the next event and advances.
func (g *Generator) Next(ev *Event) {
	g.Event(g.next, ev)
	g.next += g.step
}

// adjusted maps an event number to its event id under out-of-order grouping
// (Beam GeneratorConfig.nextAdjustedEventNumber).
func (g *Generator) adjusted(n int64) int64 {
	k := g.cfg.OutOfOrderGroupSize
	if k <= 1 {
		return n
	}
	return n/k*k + (n*953)%k
}

// TimeOf returns the event time of event id n (not adjusted).
func (g *Generator) TimeOf(n int64) int64 {
	return g.cfg.BaseTime + n*1000/g.cfg.EventsPerSecond
}

// Watermark returns the largest time t such that every event with number ≥ n
// has event time ≥ t: the time of the start of n's out-of-order group.
func (g *Generator) Watermark(n int64) int64 {
	k := g.cfg.OutOfOrderGroupSize
	return g.TimeOf(n / k * k)
}

// Event fills ev with event number n. It is a pure function of (config, n).
func (g *Generator) Event(n int64, ev *Event) {
	id := g.adjusted(n)
	ts := g.TimeOf(id)
	r := rng{s: g.seedMix ^ uint64(id)*0x9e3779b97f4a7c15}
	r.s = splitmix(r.s)
	rem := id % ProportionDenominator
	switch {
	case rem < PersonProportion:
		ev.Kind = KindPerson
		g.person(id, ts, &r, &ev.Person)
	case rem < PersonProportion+AuctionProportion:
		ev.Kind = KindAuction
		g.auction(id, ts, &r, &ev.Auction)
	default:
		ev.Kind = KindBid
		g.bid(id, ts, &r, &ev.Bid)
	}
}

// LastBase0PersonID returns the id (minus FirstPersonID) of the last person
// created at or before event id n.
func LastBase0PersonID(n int64) int64 {
	epoch, off := n/ProportionDenominator, n%ProportionDenominator
	if off >= PersonProportion {
		off = PersonProportion - 1
	}
	return epoch*PersonProportion + off
}

// LastBase0AuctionID returns the id (minus FirstAuctionID) of the last auction
// created at or before event id n; -1 before the first auction.
func LastBase0AuctionID(n int64) int64 {
	epoch, off := n/ProportionDenominator, n%ProportionDenominator
	switch {
	case off < PersonProportion:
		epoch--
		off = AuctionProportion - 1
	case off >= PersonProportion+AuctionProportion:
		off = AuctionProportion - 1
	default:
		off -= PersonProportion
	}
	return epoch*AuctionProportion + off
}

func (g *Generator) nextBase0PersonID(n int64, r *rng) int64 {
	numPeople := LastBase0PersonID(n) + 1
	active := min(numPeople, g.cfg.NumActivePeople)
	return numPeople - active + int64(r.intn(uint64(active+personIDLead)))
}

func (g *Generator) nextBase0AuctionID(n int64, r *rng) int64 {
	maxA := LastBase0AuctionID(n)
	minA := max(maxA-g.cfg.NumInFlightAuctions, 0)
	return minA + int64(r.intn(uint64(maxA-minA+1+auctionIDLead)))
}

func (g *Generator) person(n, ts int64, r *rng, p *Person) {
	p.ID = LastBase0PersonID(n) + FirstPersonID
	p.Name = g.names[r.intn(uint64(len(g.names)))]
	var buf [64]byte
	b := append(buf[:0], g.nextString(r, 7)...)
	b = append(b, '@')
	b = append(b, g.nextString(r, 5)...)
	b = append(b, ".com"...)
	p.EmailAddress = string(b)
	b = buf[:0]
	for i := range 4 {
		if i > 0 {
			b = append(b, ' ')
		}
		v := r.intn(10000)
		b = append(b, byte('0'+v/1000), byte('0'+v/100%10), byte('0'+v/10%10), byte('0'+v%10))
	}
	p.CreditCard = string(b)
	p.City = USCities[r.intn(uint64(len(USCities)))]
	p.State = USStates[r.intn(uint64(len(USStates)))]
	p.DateTime = ts
	size := 8 + len(p.Name) + len(p.EmailAddress) + len(p.CreditCard) + len(p.City) + len(p.State)
	p.Extra = g.nextExtra(r, int64(size), g.cfg.AvgPersonByteSize)
}

func (g *Generator) auction(n, ts int64, r *rng, a *Auction) {
	a.ID = LastBase0AuctionID(n) + FirstAuctionID
	if r.intn(uint64(g.cfg.HotSellersRatio)) > 0 {
		a.Seller = LastBase0PersonID(n) / hotSellerBatch * hotSellerBatch
	} else {
		a.Seller = g.nextBase0PersonID(n, r)
	}
	a.Seller += FirstPersonID
	a.Category = FirstCategoryID + int64(r.intn(NumCategories))
	a.InitialBid = nextPrice(r)
	// Auction length: uniform in [1, 2*horizon], where horizon is the event
	// time until NumInFlightAuctions more auctions have been created.
	horizon := g.TimeOf(n+g.numEvForAuct) - ts
	a.Expires = ts + 1 + int64(r.intn(uint64(max(horizon*2, 1))))
	a.ItemName = g.nextString(r, 20)
	a.Description = g.nextString(r, 100)
	a.Reserve = a.InitialBid + nextPrice(r)
	a.DateTime = ts
	size := 8 + len(a.ItemName) + len(a.Description) + 8 + 8 + 8 + 8 + 8
	a.Extra = g.nextExtra(r, int64(size), g.cfg.AvgAuctionByteSize)
}

func (g *Generator) bid(n, ts int64, r *rng, b *Bid) {
	if r.intn(uint64(g.cfg.HotAuctionRatio)) > 0 {
		b.Auction = LastBase0AuctionID(n) / hotAuctionBatch * hotAuctionBatch
	} else {
		b.Auction = g.nextBase0AuctionID(n, r)
	}
	b.Auction += FirstAuctionID
	if r.intn(uint64(g.cfg.HotBiddersRatio)) > 0 {
		// The second person of the batch, so hot bidders and hot sellers differ.
		b.Bidder = LastBase0PersonID(n)/hotBidderBatch*hotBidderBatch + 1
	} else {
		b.Bidder = g.nextBase0PersonID(n, r)
	}
	b.Bidder += FirstPersonID
	b.Price = nextPrice(r)
	if r.intn(hotChannelsRatio) > 0 {
		i := r.intn(uint64(len(hotChannels)))
		b.Channel, b.URL = hotChannels[i], g.hotURLs[i]
	} else {
		i := r.intn(channelsNumber)
		b.Channel, b.URL = g.channelNames[i], g.channelURLs[i]
	}
	b.DateTime = ts
	b.Extra = g.nextExtra(r, 8+8+8+8, g.cfg.AvgBidByteSize)
}

// nextString is Nexmark's nextString(random, maxLength): 3 to maxLength-1
// characters, a..z with a space at probability 1/13.
func (g *Generator) nextString(r *rng, maxLength int) string {
	n := 3 + int(r.intn(uint64(maxLength-3)))
	o := int(r.intn(poolSize))
	return g.spaced[o : o+n]
}

// nextExtra is Nexmark's nextExtra: letters padding an event of currentSize
// bytes to about desiredAverage bytes (±20%, uniform).
func (g *Generator) nextExtra(r *rng, currentSize, desiredAverage int64) string {
	if currentSize > desiredAverage {
		return ""
	}
	desiredAverage -= currentSize
	delta := int64(math.Round(float64(desiredAverage) * 0.2))
	size := desiredAverage - delta
	if delta != 0 {
		size += int64(r.intn(uint64(2 * delta)))
	}
	o := int(r.intn(poolSize))
	return g.letters[o : o+int(size)]
}

// nextPrice is Nexmark's price distribution: round(10^(6u) * 100) cents for u
// uniform in [0,1), i.e. log-uniform between $1 and $1,000,000.
func nextPrice(r *rng) int64 {
	return int64(math.Round(exp10x6(r.float64()) * 100))
}

// exp10x6 returns 10^(6u) for u in [0,1), as exp(x) with x = 6u·ln 10 split
// into a table part k/expSteps and a remainder below 1/expSteps, whose exp
// is a 4th-degree Taylor polynomial (relative error < 1e-13): about three
// times faster than math.Exp, which dominated the cost of a bid.
func exp10x6(u float64) float64 {
	x := u * (6 * math.Ln10)
	k := int(x * expSteps)
	d := x - float64(k)/expSteps
	p := 1 + d*(1+d*(1.0/2+d*(1.0/6+d*(1.0/24))))
	return expTable[k] * p
}

const expSteps = 256

// expTable[k] = exp(k/expSteps) for x up to 6 ln 10 ≈ 13.8.
var expTable = func() []float64 {
	t := make([]float64, int(math.Ceil(6*math.Ln10*expSteps))+1)
	for k := range t {
		t[k] = math.Exp(float64(k) / expSteps)
	}
	return t
}()

// rng is a splitmix64 random source: tiny state, fast, good enough for a
// benchmark generator, and seedable per event.
type rng struct{ s uint64 }

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (r *rng) uint64() uint64 {
	r.s += 0x9e3779b97f4a7c15
	x := r.s
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// intn returns a number in [0, n) (n > 0), by Lemire's multiply-shift.
func (r *rng) intn(n uint64) uint64 {
	hi, _ := bits.Mul64(r.uint64(), n)
	return hi
}

func (r *rng) float64() float64 {
	return float64(r.uint64()>>11) / (1 << 53)
}

// pool returns n random characters a..z, with special (if not 0) at
// probability 1/13 in place of a letter.
func (r *rng) pool(n int, special byte) string {
	b := make([]byte, n)
	for i := range b {
		if special != 0 && r.intn(13) == 0 {
			b[i] = special
		} else {
			b[i] = byte('a' + r.intn(26))
		}
	}
	return string(b)
}
