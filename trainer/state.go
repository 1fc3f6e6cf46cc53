package trainer

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"slices"
)

// DefaultDims is the number of hashed feature buckets NewState allocates:
// large enough that the few thousand n-grams of a typical intent dataset
// rarely collide, small enough that a checkpoint stays in the megabytes.
const DefaultDims = 1 << 16

// MaxLabels bounds the label set: beyond it the data looks more like free
// text than classification, and the weight matrix grows past what a
// checkpoint should carry.
const MaxLabels = 64

// maxDims bounds Dims when decoding, so a corrupt header cannot make
// UnmarshalBinary allocate gigabytes.
const maxDims = 1 << 20

// ErrNotLearnable reports training data the builtin trainer cannot learn:
// it classifies, so the assistant replies must repeat as a small label set.
// Errors returned by NewState wrap it with the specific reason.
var ErrNotLearnable = errors.New("training data is not learnable by the builtin trainer")

// State is everything a checkpoint holds. Weight matrices are stored
// feature-major (entry f*len(Labels)+k is feature f, label k) so the labels
// of one feature are contiguous: a sparse step then touches whole cache lines.
type State struct {
	Labels []string // sorted; the model's output classes
	Dims   int      // number of hashed feature buckets
	Seed   int64    // drives the per-epoch shuffle

	Step      int   // optimizer steps taken, across epochs
	Epoch     int   // epochs completed
	EpochStep int   // batches done in epoch Epoch+1; 0 between epochs
	Tokens    int64 // sum of Example.Tokens over every trained batch
	// LossSum sums the batch losses of the LossSteps steps since the
	// caller last took their mean (TakeLoss), so that a run resumed
	// between two reports averages the same batches as one that was not.
	LossSum   float64
	LossSteps int

	W, M, V            []float32 // weights and Adam moments, Dims*len(Labels)
	Bias, BiasM, BiasV []float32 // per-label bias and its Adam moments
}

// NewState builds an untrained state for train: the sorted label set, the
// default feature dimensions and zero weights (the seed only drives the
// shuffle, so zero weights keep the start trivially reproducible).
//
// The data must look like classification: at least 2 and at most MaxLabels
// distinct labels, and no more than len(train)/2 of them, so each label
// repeats on average. Otherwise the error wraps ErrNotLearnable.
func NewState(train []Example, seed int64) (*State, error) {
	seen := make(map[string]bool)
	var labels []string
	for _, e := range train {
		if !seen[e.Label] {
			seen[e.Label] = true
			labels = append(labels, e.Label)
		}
	}
	if err := learnable(len(labels), len(train)); err != nil {
		return nil, err
	}
	slices.Sort(labels)
	return newZeroState(labels, DefaultDims, seed), nil
}

// learnable applies NewState's rule to the number of distinct labels
// (any number past MaxLabels counts alike) among n examples.
func learnable(distinct, n int) error {
	switch {
	case n == 0:
		return fmt.Errorf("%w: no training examples", ErrNotLearnable)
	case distinct < 2:
		return fmt.Errorf("%w: every assistant reply is the same, so there is nothing to classify", ErrNotLearnable)
	case distinct > MaxLabels:
		return fmt.Errorf("%w: more than %d distinct assistant replies among %d examples: the builtin trainer learns at most %d labels",
			ErrNotLearnable, MaxLabels, n, MaxLabels)
	case distinct > n/2:
		return fmt.Errorf("%w: %d distinct assistant replies among %d examples: the builtin trainer learns classification data whose replies repeat as labels",
			ErrNotLearnable, distinct, n)
	}
	return nil
}

// LabelCheck applies NewState's rule on labels one example at a time, so a
// training file can be checked as it streams. It remembers a hash of each
// distinct label, and no more than MaxLabels+1 of them, so its memory does
// not grow with the data, however long the file or its replies.
type LabelCheck struct {
	seed     maphash.Seed
	hashes   map[uint64]struct{}
	examples int
}

// Add counts one example with the given label.
func (c *LabelCheck) Add(label string) {
	c.examples++
	if len(c.hashes) > MaxLabels {
		return // already not learnable; more labels change nothing
	}
	if c.hashes == nil {
		c.seed, c.hashes = maphash.MakeSeed(), make(map[uint64]struct{}, MaxLabels+1)
	}
	// A 64-bit collision among at most 65 labels is too unlikely to matter.
	c.hashes[maphash.String(c.seed, label)] = struct{}{}
}

// Err is what NewState would return for the examples added so far: nil,
// or an error wrapping ErrNotLearnable.
func (c *LabelCheck) Err() error {
	return learnable(len(c.hashes), c.examples)
}

func newZeroState(labels []string, dims int, seed int64) *State {
	size := dims * len(labels)
	return &State{
		Labels: labels,
		Dims:   dims,
		Seed:   seed,
		W:      make([]float32, size),
		M:      make([]float32, size),
		V:      make([]float32, size),
		Bias:   make([]float32, len(labels)),
		BiasM:  make([]float32, len(labels)),
		BiasV:  make([]float32, len(labels)),
	}
}

// validate reports a state whose fields disagree, so a hand-built or
// corrupted state fails loudly instead of indexing out of range mid-run.
func (s *State) validate() error {
	L := len(s.Labels)
	switch {
	case L < 2 || L > MaxLabels:
		return fmt.Errorf("trainer: state has %d labels, want 2..%d", L, MaxLabels)
	case !slices.IsSorted(s.Labels) || len(slices.Compact(slices.Clone(s.Labels))) != L:
		return errors.New("trainer: state labels are not sorted and distinct")
	case s.Dims < 1 || s.Dims > maxDims:
		return fmt.Errorf("trainer: state has %d feature dims, want 1..%d", s.Dims, maxDims)
	case len(s.W) != s.Dims*L || len(s.M) != s.Dims*L || len(s.V) != s.Dims*L:
		return errors.New("trainer: state weight matrices do not match dims x labels")
	case len(s.Bias) != L || len(s.BiasM) != L || len(s.BiasV) != L:
		return errors.New("trainer: state bias vectors do not match labels")
	case s.Step < 0 || s.Epoch < 0 || s.EpochStep < 0 || s.Tokens < 0 || s.LossSteps < 0:
		return errors.New("trainer: state progress counters are negative")
	}
	return nil
}

// TakeLoss returns the mean batch loss of the steps since the last call
// (0 when none) and starts the sum again.
func (s *State) TakeLoss() float64 {
	mean := 0.0
	if s.LossSteps > 0 {
		mean = s.LossSum / float64(s.LossSteps)
	}
	s.LossSum, s.LossSteps = 0, 0
	return mean
}

// logits writes bias + W·x for the sparse vector (idx, val) into z.
// Accumulating in float64 keeps the loss honest for long inputs.
func (s *State) logits(idx []uint32, val []float32, z []float64) {
	L := len(s.Labels)
	for k := range z {
		z[k] = float64(s.Bias[k])
	}
	for f, j := range idx {
		x := float64(val[f])
		row := s.W[int(j)*L : int(j)*L+L]
		for k, w := range row {
			z[k] += x * float64(w)
		}
	}
}

// softmax turns logits z into probabilities in place and returns the
// log-sum-exp, computed around the maximum so large logits cannot overflow.
func softmax(z []float64) float64 {
	m := slices.Max(z)
	var sum float64
	for k, v := range z {
		e := math.Exp(v - m)
		z[k] = e
		sum += e
	}
	for k := range z {
		z[k] /= sum
	}
	return m + math.Log(sum)
}

// Prediction is the model's answer for one input: the most probable label.
type Prediction struct {
	Label       string
	Probability float64
}

// Predict classifies text with the state's current weights, as the deployed
// model does.
func (s *State) Predict(text string) Prediction {
	f := featurizer{dims: s.Dims}
	idx, val := f.features(text, nil, nil)
	z := make([]float64, len(s.Labels))
	s.logits(idx, val, z)
	return predict(s.Labels, z)
}

// predict turns logits into the most probable label. Ties go to the label
// that sorts first, keeping it deterministic.
func predict(labels []string, z []float64) Prediction {
	softmax(z)
	best := 0
	for k, p := range z {
		if p > z[best] {
			best = k
		}
	}
	return Prediction{Label: labels[best], Probability: z[best]}
}
