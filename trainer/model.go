package trainer

import (
	"io"
	"slices"
)

// Model is a trained classifier as serving needs it: labels, bias and the
// weight rows of the features training touched. Unlike a State it holds no
// optimizer moments, no progress counters and no all-zero rows, so it takes
// a small fraction of a State's memory: a State keeps three dense
// Dims x labels matrices, a Model one row per feature seen in training.
type Model struct {
	labels []string
	dims   int
	rows   []uint32  // sorted feature indices that have a weight row
	w      []float32 // len(rows) x len(labels); row i belongs to feature rows[i]
	bias   []float32
}

// modelOverhead approximates the Model struct and slice headers in Bytes.
const modelOverhead = 128

// ReadModel decodes the model of a checkpoint written by State.MarshalBinary
// as it streams from r, skipping the optimizer moments: the blob is never
// held whole and no State is built, so decoding takes little more memory
// than the Model it returns.
func ReadModel(r io.Reader) (*Model, error) {
	d, h, err := openCheckpoint(r)
	if err != nil {
		return nil, err
	}
	L := len(h.labels)
	m := &Model{labels: h.labels, dims: h.dims, bias: make([]float32, L)}
	d.f32s(m.bias)
	d.skip(2 * L) // the bias's Adam moments
	err = d.rows(h.dims, func(n int) {
		m.rows, m.w = make([]uint32, 0, n), make([]float32, 0, n*L)
	}, func(j int) {
		m.rows = append(m.rows, uint32(j))
		m.w = m.w[:len(m.w)+L]
		d.f32s(m.w[len(m.w)-L:])
		d.skip(2 * L) // the row's Adam moments
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Bytes is the model's approximate size in memory, what a cache of models
// should charge for it.
func (m *Model) Bytes() int64 {
	n := int64(modelOverhead) + 4*int64(cap(m.rows)+cap(m.w)+cap(m.bias)) + 16*int64(cap(m.labels))
	for _, l := range m.labels {
		n += int64(len(l))
	}
	return n
}

// Predict classifies text as State.Predict does with the same weights.
func (m *Model) Predict(text string) Prediction {
	f := featurizer{dims: m.dims}
	idx, val := f.features(text, nil, nil)
	L := len(m.labels)
	z := make([]float64, L)
	for k := range z {
		z[k] = float64(m.bias[k])
	}
	for f, j := range idx {
		// A feature without a row has all-zero weights: it adds nothing.
		i, ok := slices.BinarySearch(m.rows, j)
		if !ok {
			continue
		}
		x := float64(val[f])
		for k, w := range m.w[i*L : i*L+L] {
			z[k] += x * float64(w)
		}
	}
	return predict(m.labels, z)
}
