package trainer

import (
	"math"
	"slices"
	"unicode"
	"unicode/utf8"
)

// FNV-1a 64-bit parameters; written out so feature hashing never allocates.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvAdd(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

// bucket maps a token hash to a feature index. FNV's low bits avalanche
// poorly, so the hash is finalised (splitmix64) before reducing it.
func bucket(h uint64, dims int) uint32 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return uint32(h % uint64(dims))
}

// featurizer turns text into a sparse, L2-normalised bag of hashed unigrams
// and bigrams. It reuses its buffers, so one featurizer serves one goroutine.
type featurizer struct {
	dims      int
	cur, prev []byte
	raw       []uint32
}

// features appends the sorted, de-duplicated feature indices of text to idx
// and their values to val. Repeated n-grams add up (term frequency) before
// normalisation, so the vector has unit length whatever the text's length.
func (f *featurizer) features(text string, idx []uint32, val []float32) ([]uint32, []float32) {
	f.raw = f.raw[:0]
	f.cur, f.prev = f.cur[:0], f.prev[:0]
	emit := func() {
		if len(f.cur) == 0 {
			return
		}
		f.raw = append(f.raw, bucket(fnvAdd(fnvOffset, f.cur), f.dims))
		if len(f.prev) > 0 {
			// Tokens never contain a space, so "a b" cannot collide with a unigram.
			h := (fnvAdd(fnvOffset, f.prev) ^ ' ') * fnvPrime
			h = fnvAdd(h, f.cur)
			f.raw = append(f.raw, bucket(h, f.dims))
		}
		f.prev, f.cur = f.cur, f.prev[:0]
	}
	for _, r := range text {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			f.cur = utf8.AppendRune(f.cur, unicode.ToLower(r))
		} else {
			emit()
		}
	}
	emit()
	if len(f.raw) == 0 {
		return idx, val
	}
	slices.Sort(f.raw)
	start := len(idx)
	var sumSq float64
	for i := 0; i < len(f.raw); {
		j := i + 1
		for j < len(f.raw) && f.raw[j] == f.raw[i] {
			j++
		}
		c := float64(j - i)
		sumSq += c * c
		idx = append(idx, f.raw[i])
		val = append(val, float32(c))
		i = j
	}
	norm := 1 / math.Sqrt(sumSq)
	for k := start; k < len(val); k++ {
		val[k] = float32(float64(val[k]) * norm)
	}
	return idx, val
}

// dataset is a featurized example set in flat arrays (CSR layout), so a
// training pass walks contiguous memory and allocates nothing.
type dataset struct {
	off    []int // example i's features are idx[off[i]:off[i+1]]
	idx    []uint32
	val    []float32
	label  []int // index into State.Labels, or -1 when the label is unknown
	tokens []int64
}

// Featurized is examples in the form a run trains on, for one state's
// features and labels. Featurizing a large file costs about as much as an
// epoch of training on it, so a worker keeps it between a job's epochs. A
// run only reads it: runs may share it.
type Featurized struct {
	dims         int
	labels       []string
	d            dataset
	unknown      int // the first example whose label the state does not know, or -1
	unknownLabel string
}

// Featurize featurizes examples for s, which must be valid: made by
// NewState or accepted by UnmarshalBinary.
func Featurize(s *State, examples []Example) *Featurized {
	f := &Featurized{dims: s.Dims, labels: slices.Clone(s.Labels), d: newDataset(s, examples), unknown: -1}
	if i := slices.Index(f.d.label, -1); i >= 0 {
		f.unknown, f.unknownLabel = i, examples[i].Label
	}
	return f
}

// For reports whether f was featurized for s's features and labels.
func (f *Featurized) For(s *State) bool {
	return f.dims == s.Dims && slices.Equal(f.labels, s.Labels)
}

// Bytes approximates the memory f takes.
func (f *Featurized) Bytes() int64 {
	d := f.d
	return int64(8*len(d.off) + 4*len(d.idx) + 4*len(d.val) + 8*len(d.label) + 8*len(d.tokens))
}

func newDataset(s *State, examples []Example) dataset {
	labelOf := make(map[string]int, len(s.Labels))
	for i, l := range s.Labels {
		labelOf[l] = i
	}
	f := featurizer{dims: s.Dims}
	d := dataset{
		off:    make([]int, 1, len(examples)+1),
		label:  make([]int, len(examples)),
		tokens: make([]int64, len(examples)),
	}
	for i, e := range examples {
		d.idx, d.val = f.features(e.Text, d.idx, d.val)
		d.off = append(d.off, len(d.idx))
		k, ok := labelOf[e.Label]
		if !ok {
			k = -1
		}
		d.label[i] = k
		d.tokens[i] = int64(e.Tokens)
	}
	return d
}

func (d *dataset) len() int { return len(d.label) }

func (d *dataset) example(i int) ([]uint32, []float32) {
	return d.idx[d.off[i]:d.off[i+1]], d.val[d.off[i]:d.off[i+1]]
}
