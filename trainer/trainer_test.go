package trainer

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

var intents = map[string][]string{
	"account":   {"reset my password", "cannot log in", "change my username", "locked out of my account", "update my email address"},
	"billing":   {"charged twice", "wrong amount on my invoice", "payment failed", "update my credit card", "billing cycle"},
	"refund":    {"want my money back", "request a refund", "return the item", "reimburse me", "refund to my card"},
	"shipping":  {"where is my package", "tracking number", "delivery is late", "package never arrived", "change the shipping address"},
	"technical": {"app crashes", "error message", "page is not loading", "screen freezes", "found a bug"},
}

var fillers = strings.Fields("hi hello please help i need my the order today can you thanks urgent again with customer service question about it is not working hey quick so really")

// intentData generates n seeded support-routing examples: a keyword phrase
// for the label, buried among filler words shared by every label.
func intentData(n int, seed uint64) []Example {
	rng := rand.New(rand.NewPCG(seed, 99))
	labels := make([]string, 0, len(intents))
	for l := range intents {
		labels = append(labels, l)
	}
	slices.Sort(labels)
	out := make([]Example, n)
	for i := range out {
		label := labels[rng.IntN(len(labels))]
		phrases := intents[label]
		var words []string
		for range 2 + rng.IntN(5) {
			words = append(words, fillers[rng.IntN(len(fillers))])
		}
		at := rng.IntN(len(words) + 1)
		words = slices.Insert(words, at, strings.Fields(phrases[rng.IntN(len(phrases))])...)
		text := "You are a support router. " + strings.Join(words, " ")
		out[i] = Example{Text: text, Label: label, Tokens: len(strings.Fields(text))}
	}
	return out
}

var defaultHP = Hyperparameters{Epochs: 3, LearningRate: 0.0002, BatchSize: 8, WarmupSteps: 10}

func newRun(t testing.TB, train, valid []Example, hp Hyperparameters) (*State, *Run) {
	t.Helper()
	s, err := NewState(train, 42)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRun(s, hp, train, valid)
	if err != nil {
		t.Fatal(err)
	}
	return s, r
}

func TestLearnsIntents(t *testing.T) {
	train, valid := intentData(500, 1), intentData(100, 2)
	s, r := newRun(t, train, valid, defaultHP)
	if len(s.Labels) != 5 {
		t.Fatalf("labels = %v, want 5", s.Labels)
	}
	var results []EpochResult
	var tokens int64
	for epoch := 1; epoch <= defaultHP.Epochs; epoch++ {
		res, err := r.TrainEpoch(context.Background(), epoch, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("epoch %d: train loss %.4f acc %.3f, validation loss %.4f acc %.3f",
			epoch, res.TrainingLoss, res.TrainingAccuracy, *res.ValidationLoss, *res.ValidationAccuracy)
		results = append(results, res)
	}
	for _, e := range train {
		tokens += int64(e.Tokens)
	}
	first, last := results[0], results[len(results)-1]
	if !(last.TrainingLoss < first.TrainingLoss && first.TrainingLoss < math.Log(5)) {
		t.Errorf("training loss epoch 3 %.4f, epoch 1 %.4f: want epoch 3 < epoch 1 < ln 5", last.TrainingLoss, first.TrainingLoss)
	}
	// Accuracy alone is lenient here (keywords make argmax easy); a loss well
	// below chance shows LearningRateScale lets 2e-4 actually fit the data.
	if last.TrainingLoss > 0.5*math.Log(5) {
		t.Errorf("training loss after 3 epochs %.4f, want < %.4f", last.TrainingLoss, 0.5*math.Log(5))
	}
	if *last.ValidationAccuracy <= 0.9 {
		t.Errorf("validation accuracy %.3f, want > 0.9", *last.ValidationAccuracy)
	}
	if want := 3 * r.StepsPerEpoch(); last.Steps != want || s.Step != want {
		t.Errorf("steps = %d (state %d), want %d", last.Steps, s.Step, want)
	}
	if last.Tokens != 3*tokens {
		t.Errorf("tokens = %d, want 3 epochs x %d", last.Tokens, tokens)
	}
	if loss, ok := r.ValidationLoss(); !ok || loss != *last.ValidationLoss {
		t.Errorf("ValidationLoss() = %v, %v; want %v, true", loss, ok, *last.ValidationLoss)
	}
	if got := r.TrainingLoss(); got != last.TrainingLoss {
		t.Errorf("TrainingLoss() = %v, want %v", got, last.TrainingLoss)
	}
	p := s.Predict("Hello, I was CHARGED TWICE for my order!")
	if p.Label != "billing" || p.Probability < 0.5 || p.Probability > 1 {
		t.Errorf("Predict = %+v, want billing with probability > 0.5", p)
	}
}

func TestUnknownValidationLabels(t *testing.T) {
	train := intentData(100, 1)
	valid := []Example{
		{Text: "charged twice", Label: "billing"},
		{Text: "charged twice", Label: "no such label"},
	}
	_, r := newRun(t, train, valid, defaultHP)
	res, err := r.TrainEpoch(context.Background(), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The unknown label is always wrong, and the known one is scored alone.
	if *res.ValidationAccuracy > 0.5 {
		t.Errorf("validation accuracy %v counts the unknown label as right", *res.ValidationAccuracy)
	}
	_, r2 := newRun(t, train, valid[:1], defaultHP)
	if _, err := r2.TrainEpoch(context.Background(), 1, nil); err != nil {
		t.Fatal(err)
	}
	if loss, _ := r2.ValidationLoss(); loss != *res.ValidationLoss {
		t.Errorf("validation loss %v, want %v (the known example's alone)", *res.ValidationLoss, loss)
	}

	_, r3 := newRun(t, train, valid[1:], defaultHP)
	if _, ok := r3.ValidationLoss(); ok {
		t.Error("ValidationLoss ok with only unknown labels")
	}
	_, r4 := newRun(t, train, nil, defaultHP)
	res, err = r4.TrainEpoch(context.Background(), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ValidationLoss != nil || res.ValidationAccuracy != nil {
		t.Error("validation results without a validation set")
	}
}

func sameState(t *testing.T, got, want *State) {
	t.Helper()
	if !slices.Equal(got.Labels, want.Labels) || got.Dims != want.Dims || got.Seed != want.Seed ||
		got.Step != want.Step || got.Epoch != want.Epoch || got.EpochStep != want.EpochStep || got.Tokens != want.Tokens ||
		math.Float64bits(got.LossSum) != math.Float64bits(want.LossSum) || got.LossSteps != want.LossSteps {
		t.Fatalf("state header differs:\n got %v %d %d %d %d %d %d\nwant %v %d %d %d %d %d %d",
			got.Labels, got.Dims, got.Seed, got.Step, got.Epoch, got.EpochStep, got.Tokens,
			want.Labels, want.Dims, want.Seed, want.Step, want.Epoch, want.EpochStep, want.Tokens)
	}
	bits := func(v []float32) []uint32 {
		out := make([]uint32, len(v))
		for i, x := range v {
			out[i] = math.Float32bits(x)
		}
		return out
	}
	for name, p := range map[string][2][]float32{
		"W": {got.W, want.W}, "M": {got.M, want.M}, "V": {got.V, want.V},
		"Bias": {got.Bias, want.Bias}, "BiasM": {got.BiasM, want.BiasM}, "BiasV": {got.BiasV, want.BiasV},
	} {
		if !slices.Equal(bits(p[0]), bits(p[1])) {
			t.Fatalf("%s differs", name)
		}
	}
}

func TestResumeIsBitwiseIdentical(t *testing.T) {
	train, valid := intentData(300, 3), intentData(50, 4)
	hp := Hyperparameters{Epochs: 2, LearningRate: 0.0002, BatchSize: 8, WarmupSteps: 10}
	ctx := context.Background()

	want, r := newRun(t, train, valid, hp)
	if _, err := r.TrainEpoch(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	wantRes, err := r.TrainEpoch(ctx, 2, nil)
	if err != nil {
		t.Fatal(err)
	}

	s, r := newRun(t, train, valid, hp)
	if _, err := r.TrainEpoch(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	const k = 17
	stop := errors.New("stop")
	_, err = r.TrainEpoch(ctx, 2, func(si StepInfo) error {
		if si.EpochStep == k {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("err = %v, want the onStep error", err)
	}
	if s.Epoch != 1 || s.EpochStep != k || s.Step != r.StepsPerEpoch()+k {
		t.Fatalf("stopped at epoch %d step %d (global %d), want 1, %d", s.Epoch, s.EpochStep, s.Step, k)
	}
	blob, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var restored State
	if err := restored.UnmarshalBinary(blob); err != nil {
		t.Fatal(err)
	}
	r, err = NewRun(&restored, hp, train, valid)
	if err != nil {
		t.Fatal(err)
	}
	first := 0
	gotRes, err := r.TrainEpoch(ctx, 2, func(si StepInfo) error {
		if first == 0 {
			first = si.EpochStep
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if first != k+1 {
		t.Errorf("resumed at batch %d, want %d", first, k+1)
	}
	sameState(t, &restored, want)
	if math.Float64bits(gotRes.TrainingLoss) != math.Float64bits(wantRes.TrainingLoss) ||
		math.Float64bits(*gotRes.ValidationLoss) != math.Float64bits(*wantRes.ValidationLoss) ||
		gotRes.Steps != wantRes.Steps || gotRes.Tokens != wantRes.Tokens {
		t.Errorf("resumed result %+v, want %+v", gotRes, wantRes)
	}

	// Re-running a completed epoch only evaluates, e.g. after a crash
	// between the last step and reporting.
	again, err := r.TrainEpoch(ctx, 2, func(StepInfo) error { return errors.New("trained again") })
	if err != nil || again.Steps != wantRes.Steps || again.TrainingLoss != wantRes.TrainingLoss {
		t.Errorf("re-running epoch 2: %+v, %v", again, err)
	}
	if _, err := r.TrainEpoch(ctx, 1, nil); err == nil {
		t.Error("training epoch 1 again was accepted")
	}
}

func TestCancel(t *testing.T) {
	train := intentData(2000, 5)
	s, r := newRun(t, train, nil, defaultHP)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.TrainEpoch(ctx, 1, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if s.Step != 0 {
		t.Fatalf("took %d steps under a cancelled context", s.Step)
	}

	ctx, cancel = context.WithCancel(context.Background())
	start := time.Now()
	_, err := r.TrainEpoch(ctx, 1, func(si StepInfo) error {
		if si.Step == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if s.Step != 3 || s.EpochStep != 3 {
		t.Errorf("stopped at step %d (epoch step %d), want 3: cancellation was not noticed at once", s.Step, s.EpochStep)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancellation took %v", d)
	}
}

func TestNotLearnable(t *testing.T) {
	freeForm := make([]Example, 50)
	for i := range freeForm {
		freeForm[i] = Example{Text: fmt.Sprint("question ", i), Label: fmt.Sprint("a unique, free-form answer number ", i)}
	}
	many := make([]Example, 1000)
	for i := range many {
		many[i] = Example{Text: "x", Label: fmt.Sprint("label", i%65)}
	}
	same := []Example{{Text: "a", Label: "yes"}, {Text: "b", Label: "yes"}}
	for name, data := range map[string][]Example{"free-form": freeForm, "65 labels": many, "one label": same, "empty": nil} {
		_, err := NewState(data, 1)
		if !errors.Is(err, ErrNotLearnable) {
			t.Errorf("%s: err = %v, want ErrNotLearnable", name, err)
		}
	}
	_, err := NewState(freeForm, 1)
	if !strings.Contains(err.Error(), "50 distinct assistant replies among 50 examples") {
		t.Errorf("error does not say why: %v", err)
	}
	for i := range many {
		many[i].Label = fmt.Sprint("label", i%64)
	}
	if _, err := NewState(many[:128], 1); err != nil {
		t.Errorf("64 labels, each twice: %v", err)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	train := intentData(500, 6)
	s, r := newRun(t, train, nil, defaultHP)
	if _, err := r.TrainEpoch(context.Background(), 1, nil); err != nil {
		t.Fatal(err)
	}
	s.W[7] = float32(math.Copysign(0, -1)) // a -0 row must survive the sparse encoding
	blob, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("checkpoint for %d labels after 1 epoch: %d bytes", len(s.Labels), len(blob))
	var got State
	if err := got.UnmarshalBinary(blob); err != nil {
		t.Fatal(err)
	}
	sameState(t, &got, s)
	text := "where is my package"
	if a, b := got.Predict(text), s.Predict(text); a != b {
		t.Errorf("restored predicts %+v, want %+v", a, b)
	}

	fresh, _ := NewState(train, 1)
	if b, err := fresh.MarshalBinary(); err != nil || len(b) > 200 {
		t.Errorf("untrained checkpoint is %d bytes (%v), want it tiny", len(b), err)
	}

	flipped := slices.Clone(blob)
	flipped[len(flipped)/2] ^= 0x40
	for name, bad := range map[string][]byte{
		"nil":       nil,
		"text":      []byte("hello, world"),
		"magic":     []byte(checkpointMagic),
		"version":   append([]byte(checkpointMagic), 9),
		"not gzip":  append([]byte(checkpointMagic), 1, 2, 3, 4, 5, 6, 7, 8),
		"truncated": blob[:len(blob)-10],
		"flipped":   flipped,
	} {
		keep := got
		if err := got.UnmarshalBinary(bad); err == nil {
			t.Errorf("%s: UnmarshalBinary accepted garbage", name)
		}
		if got.Step != keep.Step || &got.W[0] != &keep.W[0] {
			t.Errorf("%s: failed decode modified the state", name)
		}
	}
}

func TestWarmup(t *testing.T) {
	train := intentData(400, 7)
	hp := Hyperparameters{Epochs: 1, LearningRate: 0.0003, BatchSize: 8, WarmupSteps: 10}
	_, r := newRun(t, train, nil, hp)
	var lrs []float64
	if _, err := r.TrainEpoch(context.Background(), 1, func(si StepInfo) error {
		lrs = append(lrs, si.LearningRate)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(lrs) != r.StepsPerEpoch() || len(lrs) != 50 {
		t.Fatalf("%d steps, want 50", len(lrs))
	}
	for i, lr := range lrs {
		step := i + 1
		want := hp.LearningRate * math.Min(1, float64(step)/10)
		if math.Abs(lr-want) > 1e-15 {
			t.Errorf("step %d: learning rate %v, want %v", step, lr, want)
		}
	}
}

func TestInvalidHyperparameters(t *testing.T) {
	train := intentData(50, 8)
	s, _ := NewState(train, 1)
	for _, hp := range []Hyperparameters{
		{Epochs: 0, LearningRate: 1e-4, BatchSize: 8},
		{Epochs: 1, LearningRate: 0, BatchSize: 8},
		{Epochs: 1, LearningRate: math.NaN(), BatchSize: 8},
		{Epochs: 1, LearningRate: 1e-4, BatchSize: 0},
		{Epochs: 1, LearningRate: 1e-4, BatchSize: 8, WarmupSteps: -1},
	} {
		if _, err := NewRun(s, hp, train, nil); err == nil {
			t.Errorf("NewRun accepted %+v", hp)
		}
	}
	if _, err := NewRun(s, defaultHP, []Example{{Text: "x", Label: "unseen"}}, nil); err == nil {
		t.Error("NewRun accepted a training label the state does not know")
	}
}

func BenchmarkTrainEpoch(b *testing.B) {
	train := intentData(4000, 9)
	hp := Hyperparameters{Epochs: b.N, LearningRate: 0.0002, BatchSize: 8, WarmupSteps: 10}
	_, r := newRun(b, train, nil, hp)
	b.ResetTimer()
	for i := range b.N {
		if _, err := r.TrainEpoch(context.Background(), i+1, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(train))/b.Elapsed().Seconds(), "examples/s")
}

// A state that could not have come from NewState or a checkpoint is
// refused with an error, before featurizing would divide by its dims.
func TestNewRunRefusesABadState(t *testing.T) {
	hp := Hyperparameters{Epochs: 1, LearningRate: 0.1, BatchSize: 8}
	if _, err := NewRun(&State{}, hp, []Example{{Text: "a ticket", Label: "billing"}}, nil); err == nil {
		t.Fatal("NewRun accepted a state with no labels and no dims")
	}
}

// TakeLoss averages the batch losses since the last take, and the sum
// survives a checkpoint, so a report spanning a resume is the same.
func TestTakeLoss(t *testing.T) {
	s, r := newRun(t, intentData(200, 10), nil, defaultHP)
	var losses []float64
	if _, err := r.TrainEpoch(context.Background(), 1, func(si StepInfo) error {
		losses = append(losses, si.BatchLoss)
		if si.EpochStep == 7 {
			s.TakeLoss()
			losses = nil
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, l := range losses {
		sum += l
	}
	if s.LossSteps != len(losses) || s.LossSum != sum {
		t.Fatalf("the state sums %d losses to %v; want %d to %v", s.LossSteps, s.LossSum, len(losses), sum)
	}
	blob, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var restored State
	if err := restored.UnmarshalBinary(blob); err != nil {
		t.Fatal(err)
	}
	if got, want := restored.TakeLoss(), sum/float64(len(losses)); got != want {
		t.Errorf("restored mean loss %v; want %v", got, want)
	}
	if restored.LossSteps != 0 || restored.TakeLoss() != 0 {
		t.Error("TakeLoss did not start the sum again")
	}
}

// A version 1 checkpoint, from before the loss sum, still decodes.
func TestDecodesVersion1(t *testing.T) {
	s, r := newRun(t, intentData(100, 11), nil, defaultHP)
	if _, err := r.TrainEpoch(context.Background(), 1, nil); err != nil {
		t.Fatal(err)
	}
	blob, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// Version 1's body is version 2's without the two loss fields, which
	// follow the header's seed and four counters.
	zr, err := gzip.NewReader(bytes.NewReader(blob[len(checkpointMagic)+1:]))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	at := 8
	for _, l := range s.Labels {
		at += len(binary.AppendUvarint(nil, uint64(len(l)))) + len(l)
	}
	at += 5 * 8
	var v1 bytes.Buffer
	v1.WriteString(checkpointMagic)
	v1.WriteByte(1)
	zw := gzip.NewWriter(&v1)
	zw.Write(slices.Concat(body[:at], body[at+16:]))
	zw.Close()
	var got State
	if err := got.UnmarshalBinary(v1.Bytes()); err != nil {
		t.Fatal(err)
	}
	s.LossSum, s.LossSteps = 0, 0
	sameState(t, &got, s)
}

// An evaluation pass reports its progress as it goes.
func TestOnEvaluate(t *testing.T) {
	valid := intentData(2*EvalReportEvery+1, 12)
	_, r := newRun(t, intentData(100, 13), valid, defaultHP)
	var calls [][2]int
	r.OnEvaluate = func(done, total int) { calls = append(calls, [2]int{done, total}) }
	if _, ok := r.ValidationLoss(); !ok {
		t.Fatal("no validation loss")
	}
	want := [][2]int{{0, len(valid)}, {EvalReportEvery, len(valid)}, {2 * EvalReportEvery, len(valid)}}
	if !slices.Equal(calls, want) {
		t.Errorf("OnEvaluate called with %v; want %v", calls, want)
	}
}
