// Package trainer is tuneforge's builtin trainer: it does real training on
// the CPU, with no GPU and no downloads, standing in for the named base model.
//
// The model is a compact softmax classifier over hashed word unigram and
// bigram features, trained by minibatch Adam with cross-entropy loss. It
// learns chat data whose assistant replies repeat as a small set of labels
// (intent classification and the like); NewState rejects anything else with
// ErrNotLearnable rather than pretend to learn it.
//
// Training is deterministic: the same seed and data give the same weights
// bit for bit, and a State checkpointed mid-epoch resumes exactly where it
// stopped, because the per-epoch shuffle is a function of (seed, epoch) and
// the state holds the optimizer moments and progress counters.
//
// Learning rates: callers pass LLM-style learning rates (typically 1e-5 to
// 1e-3, tuned for LoRA adapters). The classifier's parameters live on a
// different scale, and at 2e-4 Adam would barely move them in a few hundred
// steps, so the builtin trainer multiplies the learning rate by the fixed
// factor LearningRateScale. Everything reported (StepInfo.LearningRate) is in
// the caller's unscaled units, so the numbers match what the user asked for.
package trainer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// LearningRateScale multiplies the user-facing learning rate before Adam
// uses it; see the package comment for why. At 100, the common LLM default
// of 2e-4 becomes an Adam step of 0.02, which fits a small intent set in a
// few epochs, and 1e-3 becomes 0.1, still stable for a linear model.
const LearningRateScale = 100

// Adam's usual constants; the trainer exposes none of them to users.
const (
	adamBeta1 = 0.9
	adamBeta2 = 0.999
	adamEps   = 1e-8
)

// Example is one training example.
type Example struct {
	Text   string // model input: the caller concatenates the system and user turns
	Label  string // target: the assistant reply
	Tokens int    // the caller's token count, summed into trained tokens
}

// Hyperparameters are the training settings as the API takes them.
type Hyperparameters struct {
	Epochs       int     // TrainEpoch accepts epochs 1..Epochs
	LearningRate float64 // unscaled; see LearningRateScale
	BatchSize    int
	WarmupSteps  int // optimizer steps over which the rate ramps linearly from 0
	// Seed fixes the run's initialization and data order; nil for jobs
	// created before seeds were chosen, whose seed derives from their ID.
	Seed *int64 `json:",omitempty"`
	// QLoRA trains LoRA adapters on 4-bit frozen base weights: a command
	// trainer's setting, which this trainer refuses (activities).
	QLoRA bool `json:",omitempty"`
	// LoRARank is the rank of the LoRA adapter a command trainer trains;
	// 0 in inputs from before it was chosen, which trained at
	// DefaultLoRARank (see Rank).
	LoRARank int `json:",omitempty"`
}

// DefaultLoRARank is the LoRA rank of a job that names none: trainers/hf's
// --lora-r default.
const DefaultLoRARank = 16

// Rank is the LoRA rank the job trains at.
func (hp Hyperparameters) Rank() int {
	if hp.LoRARank == 0 {
		return DefaultLoRARank
	}
	return hp.LoRARank
}

func (hp Hyperparameters) validate() error {
	switch {
	case hp.Epochs < 1:
		return fmt.Errorf("trainer: epochs must be at least 1, got %d", hp.Epochs)
	case !(hp.LearningRate > 0) || math.IsInf(hp.LearningRate, 0):
		return fmt.Errorf("trainer: learning rate must be a positive number, got %v", hp.LearningRate)
	case hp.BatchSize < 1:
		return fmt.Errorf("trainer: batch size must be at least 1, got %d", hp.BatchSize)
	case hp.WarmupSteps < 0:
		return fmt.Errorf("trainer: warmup steps must not be negative, got %d", hp.WarmupSteps)
	}
	return nil
}

// learningRate is the user-facing rate at global step (1-based): a linear
// ramp over WarmupSteps, then constant.
func (hp Hyperparameters) learningRate(step int) float64 {
	if step < hp.WarmupSteps {
		return hp.LearningRate * float64(step) / float64(hp.WarmupSteps)
	}
	return hp.LearningRate
}

// StepInfo describes one optimizer step, for progress reporting.
type StepInfo struct {
	Step          int // global optimizer step, 1-based, across epochs
	Epoch         int
	EpochStep     int // batches done in this epoch
	StepsPerEpoch int
	BatchLoss     float64 // mean cross-entropy of the batch, before the update
	LearningRate  float64 // user-facing (unscaled) rate after warmup
	Tokens        int64   // trained tokens so far
}

// EpochResult is the model's quality at the end of an epoch, measured by a
// full pass without updates, so it reflects the final weights rather than a
// running average over a moving model.
type EpochResult struct {
	Epoch              int
	TrainingLoss       float64
	TrainingAccuracy   float64
	ValidationLoss     *float64 // nil without a validation example whose label is known
	ValidationAccuracy *float64 // nil without a validation set
	Tokens             int64
	Steps              int // global step at the end
}

// Run trains a State on featurized data. It updates the State in place and
// is not safe for concurrent use.
type Run struct {
	s            *State
	hp           Hyperparameters
	train, valid dataset

	// Scratch for the sparse gradient: slot maps a feature to its row in
	// grad (-1 when untouched this batch), touched lists those features.
	slot    []int32
	touched []uint32
	grad    []float64
	gradB   []float64
	zeros   []float64
	z       []float64

	// OnEvaluate, when set, is called as an evaluation pass goes: at its
	// start and every EvalReportEvery examples, with the examples done and
	// the pass's total. A long pass over a large set reports it is alive.
	OnEvaluate func(done, total int)
}

// EvalReportEvery is how many examples an evaluation pass takes between
// calls of Run.OnEvaluate.
const EvalReportEvery = 4096

// NewRun featurizes train and validation once. Every training label must be
// in the state's label set (the state is built from the training set).
// Validation examples whose label is unknown to the state can never be
// predicted, so they count as wrong in validation accuracy; they have no
// defined cross-entropy, so validation loss skips them.
func NewRun(s *State, hp Hyperparameters, train, validation []Example) (*Run, error) {
	// Featurizing needs the state's dims: refuse a bad state first.
	if err := s.validate(); err != nil {
		return nil, err
	}
	return NewRunFeaturized(s, hp, Featurize(s, train), Featurize(s, validation))
}

// NewRunFeaturized is NewRun on examples already featurized for s.
func NewRunFeaturized(s *State, hp Hyperparameters, train, validation *Featurized) (*Run, error) {
	if err := hp.validate(); err != nil {
		return nil, err
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	if !train.For(s) || !validation.For(s) {
		return nil, errors.New("trainer: examples featurized for another state")
	}
	if train.d.len() == 0 {
		return nil, errors.New("trainer: no training examples")
	}
	if train.unknown >= 0 {
		return nil, fmt.Errorf("trainer: training example %d has label %q, which the state does not know", train.unknown, train.unknownLabel)
	}
	r := &Run{
		s:     s,
		hp:    hp,
		train: train.d,
		valid: validation.d,
		slot:  make([]int32, s.Dims),
		gradB: make([]float64, len(s.Labels)),
		zeros: make([]float64, len(s.Labels)),
		z:     make([]float64, len(s.Labels)),
	}
	for i := range r.slot {
		r.slot[i] = -1
	}
	return r, nil
}

// StepsPerEpoch is the number of optimizer steps in one epoch; the last
// batch may be short.
func (r *Run) StepsPerEpoch() int {
	return (r.train.len() + r.hp.BatchSize - 1) / r.hp.BatchSize
}

// TrainEpoch trains epoch number epoch (1-based) from where the State left
// off, resuming mid-epoch when State.EpochStep > 0. After each optimizer step
// it calls onStep (if non-nil); an error from onStep stops training and is
// returned as is, with the State consistent at that step so it can be
// checkpointed and resumed. ctx is checked before every step and its error
// returned when cancelled. At the end of the epoch State.Epoch = epoch and
// State.EpochStep = 0. If epoch is already the last one completed (say the
// process died between the final step and reporting), it only evaluates.
func (r *Run) TrainEpoch(ctx context.Context, epoch int, onStep func(StepInfo) error) (EpochResult, error) {
	s := r.s
	if epoch < 1 || epoch > r.hp.Epochs {
		return EpochResult{}, fmt.Errorf("trainer: epoch %d outside 1..%d", epoch, r.hp.Epochs)
	}
	spe := r.StepsPerEpoch()
	switch {
	case s.Epoch == epoch && s.EpochStep == 0:
		// Already trained; fall through to evaluation.
	case s.Epoch != epoch-1:
		return EpochResult{}, fmt.Errorf("trainer: state has completed %d epochs, so epoch %d cannot run next", s.Epoch, epoch)
	case s.EpochStep >= spe:
		return EpochResult{}, fmt.Errorf("trainer: state is at batch %d of an epoch with %d batches; was the batch size or data changed?", s.EpochStep, spe)
	default:
		order := rand.New(rand.NewPCG(uint64(s.Seed), uint64(epoch))).Perm(r.train.len())
		for s.Epoch < epoch {
			if err := ctx.Err(); err != nil {
				return EpochResult{}, err
			}
			lo := s.EpochStep * r.hp.BatchSize
			loss, lr := r.step(order[lo:min(lo+r.hp.BatchSize, len(order))])
			s.LossSum += loss
			s.LossSteps++
			info := StepInfo{
				Step:          s.Step,
				Epoch:         epoch,
				EpochStep:     s.EpochStep,
				StepsPerEpoch: spe,
				BatchLoss:     loss,
				LearningRate:  lr,
				Tokens:        s.Tokens,
			}
			// Roll over before onStep, so a checkpoint taken after the
			// last batch already records the epoch as complete.
			if s.EpochStep == spe {
				s.Epoch, s.EpochStep = epoch, 0
			}
			if onStep != nil {
				if err := onStep(info); err != nil {
					return EpochResult{}, err
				}
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return EpochResult{}, err
	}
	res := EpochResult{Epoch: epoch, Tokens: s.Tokens, Steps: s.Step}
	res.TrainingLoss, res.TrainingAccuracy, _ = r.evaluate(&r.train)
	if r.valid.len() > 0 {
		loss, acc, ok := r.evaluate(&r.valid)
		res.ValidationAccuracy = &acc
		if ok {
			res.ValidationLoss = &loss
		}
	}
	return res, nil
}

// step takes one Adam step on the batch of training indices and returns the
// batch's mean loss and the user-facing learning rate it used. Only features
// present in the batch are updated (lazy Adam): their moments decay only when
// they receive a gradient, which keeps a step O(batch features x labels)
// instead of O(dims x labels); bias correction uses the global step.
func (r *Run) step(batch []int) (loss float64, lr float64) {
	s := r.s
	L := len(s.Labels)
	clear(r.gradB)
	r.touched, r.grad = r.touched[:0], r.grad[:0]
	inv := 1 / float64(len(batch))
	z := r.z
	for _, i := range batch {
		idx, val := r.train.example(i)
		y := r.train.label[i]
		s.logits(idx, val, z)
		zy := z[y]
		loss += softmax(z) - zy
		// d(loss)/d(logit k) = p_k - [k == y], averaged over the batch.
		z[y]--
		for k := range z {
			z[k] *= inv
			r.gradB[k] += z[k]
		}
		for f, j := range idx {
			sl := r.slot[j]
			if sl < 0 {
				sl = int32(len(r.touched))
				r.slot[j] = sl
				r.touched = append(r.touched, j)
				r.grad = append(r.grad, r.zeros...)
			}
			x := float64(val[f])
			g := r.grad[int(sl)*L : int(sl)*L+L]
			for k, d := range z {
				g[k] += x * d
			}
		}
		s.Tokens += r.train.tokens[i]
	}

	s.Step++
	s.EpochStep++
	lr = r.hp.learningRate(s.Step)
	t := float64(s.Step)
	alpha := lr * LearningRateScale * math.Sqrt(1-math.Pow(adamBeta2, t)) / (1 - math.Pow(adamBeta1, t))
	for sl, j := range r.touched {
		o := int(j) * L
		adam(s.W[o:o+L], s.M[o:o+L], s.V[o:o+L], r.grad[sl*L:sl*L+L], alpha)
		r.slot[j] = -1
	}
	adam(s.Bias, s.BiasM, s.BiasV, r.gradB, alpha)
	return loss * inv, lr
}

// adam applies one bias-corrected Adam update; alpha already folds in the
// bias correction for the current step.
func adam(w, m, v []float32, g []float64, alpha float64) {
	for k, gk := range g {
		mk := adamBeta1*float64(m[k]) + (1-adamBeta1)*gk
		vk := adamBeta2*float64(v[k]) + (1-adamBeta2)*gk*gk
		m[k], v[k] = float32(mk), float32(vk)
		w[k] = float32(float64(w[k]) - alpha*mk/(math.Sqrt(vk)+adamEps))
	}
}

// evaluate returns the mean cross-entropy over examples with a known label
// (ok=false when there are none) and the accuracy over all examples, an
// unknown label counting as wrong.
func (r *Run) evaluate(d *dataset) (loss, accuracy float64, ok bool) {
	z := r.z
	var scored, correct int
	for i := range d.len() {
		if r.OnEvaluate != nil && i%EvalReportEvery == 0 {
			r.OnEvaluate(i, d.len())
		}
		y := d.label[i]
		if y < 0 {
			continue
		}
		idx, val := d.example(i)
		r.s.logits(idx, val, z)
		best := 0
		for k, v := range z {
			if v > z[best] {
				best = k
			}
		}
		if best == y {
			correct++
		}
		zy := z[y]
		loss += softmax(z) - zy
		scored++
	}
	if d.len() > 0 {
		accuracy = float64(correct) / float64(d.len())
	}
	if scored == 0 {
		return 0, accuracy, false
	}
	return loss / float64(scored), accuracy, true
}

// ValidationLoss is the mean cross-entropy of the current weights on the
// validation examples whose label the state knows; ok is false when there
// are none (no validation set, or only unknown labels).
func (r *Run) ValidationLoss() (loss float64, ok bool) {
	loss, _, ok = r.evaluate(&r.valid)
	return loss, ok
}

// TrainingLoss is the mean cross-entropy of the current weights on the
// whole training set.
func (r *Run) TrainingLoss() float64 {
	loss, _, _ := r.evaluate(&r.train)
	return loss
}
