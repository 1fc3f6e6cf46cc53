package activities

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"unsafe"

	"go.temporal.io/sdk/activity"

	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/trainer"
)

// ValidateInput names the datasets of a job.
type ValidateInput struct {
	JobID             string
	DatasetKey        string
	ValidationKey     string
	MaxSequenceLength int
}

// DatasetSummary is what validation found.
type DatasetSummary struct {
	Examples           int
	Tokens             int64
	ValidationExamples int
}

// ValidateDataset streams the training (and validation) files, checks every
// line and fails, without retries, with line-numbered errors on bad data.
// It keeps nothing per example, so its memory does not grow with the files.
// The training file's labels are held to the builtin trainer's rule only
// when that trainer is the one that will train the job (builtinLabelRule).
func (a *Activities) ValidateDataset(ctx context.Context, in ValidateInput) (DatasetSummary, error) {
	if err := a.appendLog(ctx, in.JobID, LevelInfo, validatingMessage); err != nil {
		return DatasetSummary{}, err
	}
	v, _, err := a.checkDataset(ctx, a.Store.Conn, in, false)
	if err != nil {
		return DatasetSummary{}, err
	}
	return v.sum, a.Store.Transact(ctx, func(tx db.Conn) error { return v.record(ctx, tx, in.JobID) })
}

// RecordedValidation is ValidateRecordedDataset's answer: Done when the
// uploads' records settled the job's files, with what they hold.
type RecordedValidation struct {
	Done    bool
	Summary DatasetSummary
}

// ValidateRecordedDataset validates the job's files from what their
// uploads recorded, in one short transaction and without reading a file,
// so that the job workflow runs it as a local activity in the task that
// starts it. It is not Done when a file needs reading (ValidateDataset
// then does); a problem the records show fails it as ValidateDataset would.
func (a *Activities) ValidateRecordedDataset(ctx context.Context, in ValidateInput) (RecordedValidation, error) {
	var out RecordedValidation
	err := a.Store.Transact(ctx, func(tx db.Conn) error {
		v, done, err := a.checkDataset(ctx, tx, in, true)
		if err != nil || !done {
			return err
		}
		out = RecordedValidation{Done: true, Summary: v.sum}
		return v.record(ctx, tx, in.JobID, validatingMessage)
	})
	return out, err
}

// validatingMessage is the job's log line as its validation begins.
const validatingMessage = "Validating the training dataset"

// validation is what checking a job's files found, and how to tell it.
type validation struct {
	sum  DatasetSummary
	msg  string
	data map[string]any
}

// record marks the job validated with its event and, unless a run of the
// activity before this one did, its log lines: first, then its message.
func (v validation) record(ctx context.Context, tx db.Conn, jobID string, first ...string) error {
	if err := tx.MarkValidated(ctx, jobID); err != nil {
		return err
	}
	recorded, err := recordEvent(ctx, tx, db.Event{JobID: jobID, Type: db.EventValidated, Message: v.msg, Data: v.data})
	if err != nil || !recorded {
		return err
	}
	for _, line := range append(first, v.msg) {
		if err := appendLogOn(ctx, tx, jobID, LevelInfo, line); err != nil {
			return err
		}
	}
	return nil
}

// checkDataset checks the job's files, reading the job and its pool's
// trainers on c. With recordsOnly it reads no file: done is false when an
// upload's record does not settle one.
func (a *Activities) checkDataset(ctx context.Context, c db.Conn, in ValidateInput, recordsOnly bool) (v validation, done bool, err error) {
	job, err := c.JobByID(ctx, in.JobID)
	if db.IsNotFound(err) {
		return v, false, jobGone(in.JobID)
	}
	if err != nil {
		return v, false, err
	}
	trainers, err := c.LiveTrainers(ctx, job.HardwareID, a.GPULiveness)
	if err != nil {
		return v, false, err
	}
	// Preference pairs have no labels; the builtin trainer refuses DPO.
	checkLabels := builtinLabelRule(trainers) && !job.Method.DPO()
	train, done, err := a.validateFile(ctx, c, in.DatasetKey, "training file", in.MaxSequenceLength, true, checkLabels, recordsOnly)
	if err != nil || !done {
		return v, false, err
	}
	if err := methodFits(job.Method, train.Format, "training file"); err != nil {
		return v, false, err
	}
	v.sum = DatasetSummary{Examples: train.Examples, Tokens: train.Tokens}
	if in.ValidationKey != "" {
		// A small validation set is fine, whatever its labels: it only measures.
		val, done, err := a.validateFile(ctx, c, in.ValidationKey, "validation file", in.MaxSequenceLength, false, false, recordsOnly)
		if err != nil || !done {
			return v, false, err
		}
		if err := methodFits(job.Method, val.Format, "validation file"); err != nil {
			return v, false, err
		}
		v.sum.ValidationExamples = val.Examples
	}
	v.msg = fmt.Sprintf("Dataset valid: %d training examples, %d tokens", v.sum.Examples, v.sum.Tokens)
	v.data = map[string]any{"examples": v.sum.Examples, "tokens": v.sum.Tokens, "trainers": trainers, "labelsChecked": checkLabels}
	if in.ValidationKey != "" {
		v.msg += fmt.Sprintf(", %d validation examples", v.sum.ValidationExamples)
		v.data["validationExamples"] = v.sum.ValidationExamples
	}
	v.msg += labelNote(trainers, checkLabels, job.HardwareID)
	return v, true, nil
}

// methodFits refuses a file whose format the job's method cannot train.
// The API refuses such a job at create when the upload recorded the format.
func methodFits(m db.Method, f dataset.Format, what string) error {
	if p := MethodFormatProblem(m, f); p != "" {
		return invalidData("%s: %s", what, p)
	}
	return nil
}

// MethodFormatProblem says why method m cannot train a file in format f
// ("" for a file uploaded before formats were recorded), or "" when it can:
// DPO learns preference pairs, supervised training demonstrations.
func MethodFormatProblem(m db.Method, f dataset.Format) string {
	if m.DPO() == f.Preference() {
		return ""
	}
	if m.DPO() {
		format := f.Describe()
		if f == "" {
			format = "chat messages or prompt/completion format" // uploads did not take preference data then
		}
		return "it is in " + format + `, and the dpo method trains preference data: lines of ` +
			`{"input":{"messages":[...]},"preferred_output":[...],"non_preferred_output":[...]} (OpenAI's DPO format)`
	}
	return "it is in " + f.Describe() + ", which only the dpo method trains; use method dpo, or a file of chat messages or prompt/completion lines"
}

// builtinLabelRule reports whether a job's training file is held to the
// builtin trainer's label rule (trainer.LabelCheck: few distinct assistant
// replies, repeating as labels) at validation, given the trainers that the
// live training workers of the job's pool advertise (db.Conn.LiveTrainers).
//
// The rule: only when at least one worker of the pool is live and every
// live one runs the builtin trainer. Whichever of them takes the job's
// epochs would then refuse such labels, so refusing them at validation
// fails the job before it waits for a slot, and names the problem as
// early. A command trainer (a Hugging Face LoRA trainer, say) learns free
// text: when any live worker of the pool runs one, or a trainer it did not
// name (""), the job may well be trained, and when none is live, the worker
// that comes may run either. Validation then never refuses the labels and
// leaves them to the trainer: the builtin trainer checks them itself when it
// starts a job (trainBuiltin's loadState), failing it without retries with
// the same message as validation would have.
func builtinLabelRule(trainers []string) bool {
	return OnlyBuiltin(trainers)
}

// OnlyBuiltin says whether a pool's live training workers, as trainers
// lists their trainers (db.Conn.LiveTrainers), are some and all run the
// builtin trainer: whichever of them takes a job then trains it with that
// trainer, and refuses what only a command trainer trains (BuiltinRefuses).
func OnlyBuiltin(trainers []string) bool {
	return allAre(trainers, config.TrainerBuiltin)
}

// allAre reports whether there are trainers and each is kind.
func allAre(trainers []string, kind string) bool {
	return len(trainers) > 0 && !slices.ContainsFunc(trainers, func(k string) bool { return k != kind })
}

// labelNote completes the validated message when the labels were left to
// the trainer though the builtin trainer may take the job: the dataset is
// then valid for validation's checks, not necessarily for that trainer.
func labelNote(trainers []string, checked bool, pool string) string {
	switch {
	case checked || allAre(trainers, config.TrainerCommand):
		return ""
	case len(trainers) == 0:
		return fmt.Sprintf("; no training worker of %s is live, so the labels are left to the trainer that takes the job (the builtin trainer checks them when it starts)", pool)
	default:
		return fmt.Sprintf("; the training workers of %s do not all run the builtin trainer, so the labels are left to the trainer that takes the job (the builtin trainer checks them when it starts)", pool)
	}
}

// validateFile checks a dataset file for a job: from what its upload found,
// when that was recorded and shows nothing wrong for the job (enough
// examples, none over the model's limit and, when labels is set, labels the
// builtin trainer learns; each line was valid then and the file cannot
// change), else by reading the file, which names each bad line. training
// asks for a training file's MinTrainingExamples (else one example is
// enough); labels, for a training file held to the builtin trainer's label
// rule. With recordsOnly it reads no file: done is false when the record
// does not settle it.
func (a *Activities) validateFile(ctx context.Context, c db.Conn, key, what string, maxSeq int, training, labels, recordsOnly bool) (sum dataset.Summary, done bool, err error) {
	st, err := c.DatasetStatsOf(ctx, key)
	if err != nil {
		return sum, false, err
	}
	// A format not recorded (an upload from before formats were) is not
	// the preference format, which uploads did not accept then.
	enough := st != nil && st.Examples > 0 && (!training || st.Examples >= dataset.MinTrainingExamples)
	if enough && (maxSeq <= 0 || st.MaxTokens <= maxSeq) && (!labels || st.LabelProblem == "") {
		return dataset.Summary{Format: dataset.Format(st.Format), Examples: st.Examples, Tokens: st.Tokens, MaxTokens: st.MaxTokens}, true, nil
	}
	if recordsOnly {
		return sum, false, nil
	}
	switch {
	case !training:
		sum, err = a.scan(ctx, key, what, maxSeq, 1, nil)
	case !labels:
		sum, err = a.scan(ctx, key, what, maxSeq, dataset.MinTrainingExamples, nil)
	default:
		sum, err = a.scanTraining(ctx, key, maxSeq)
	}
	return sum, err == nil, err
}

// scanTraining streams a training file through validateTraining.
func (a *Activities) scanTraining(ctx context.Context, key string, maxSeq int) (dataset.Summary, error) {
	r, err := a.open(ctx, key, "training file")
	if err != nil {
		return dataset.Summary{}, err
	}
	defer r.Close()
	return validateTraining(ctx, r, maxSeq)
}

// validateTraining checks a training file as it streams from r: every line,
// and the labels as the builtin trainer will check them.
func validateTraining(ctx context.Context, r io.Reader, maxSeq int) (dataset.Summary, error) {
	var labels trainer.LabelCheck
	sum, err := scanReader(ctx, r, "training file", dataset.Options{MaxSequenceLength: maxSeq}, func(e dataset.Example) error {
		labels.Add(e.Target())
		return nil
	})
	if err != nil {
		return sum, err
	}
	// Preference pairs are no labels: methodFits refuses them for a
	// supervised job, with what to do.
	if err := labels.Err(); err != nil && !sum.Format.Preference() {
		return sum, invalidData("training file: %v", err)
	}
	return sum, nil
}

func (a *Activities) open(ctx context.Context, key, what string) (io.ReadCloser, error) {
	r, err := a.Artifacts.Open(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", what, err)
	}
	return r, nil
}

// scan streams one dataset file of the artifact store through scanReader.
func (a *Activities) scan(ctx context.Context, key, what string, maxSeq, minExamples int, fn func(dataset.Example) error) (dataset.Summary, error) {
	r, err := a.open(ctx, key, what)
	if err != nil {
		return dataset.Summary{}, err
	}
	defer r.Close()
	return scanReader(ctx, r, what, dataset.Options{MinExamples: minExamples, MaxSequenceLength: maxSeq}, fn)
}

// scanReader streams r through dataset.Scan, calling fn (if non-nil) for
// each valid example and heartbeating every 1000, and turns bad data into a
// non-retryable error naming the file.
func scanReader(ctx context.Context, r io.Reader, what string, opts dataset.Options, fn func(dataset.Example) error) (dataset.Summary, error) {
	// Outside an activity (tests, benchmarks) there is nothing to heartbeat.
	beat := activity.IsActivity(ctx)
	n := 0
	sum, err := dataset.Scan(ctx, r, opts, func(e dataset.Example) error {
		if n++; beat && n%1000 == 0 {
			activity.RecordHeartbeat(ctx, n)
		}
		if fn != nil {
			return fn(e)
		}
		return nil
	})
	var verr *dataset.ValidationError
	if errors.As(err, &verr) {
		return sum, invalidData("%s: %v", what, verr)
	}
	if err != nil {
		return sum, fmt.Errorf("read %s: %w", what, err)
	}
	return sum, nil
}

// loadExamples reads a dataset file into the trainer's examples.
// Epochs of one job follow each other on the same workers, so the parsed
// dataset is kept: datasets are immutable under their keys.
func (a *Activities) loadExamples(ctx context.Context, key, what string) ([]trainer.Example, error) {
	if out, ok := a.datasets.get(key); ok {
		return out, nil
	}
	var out []trainer.Example
	_, err := a.scan(ctx, key, what, 0, 1, func(e dataset.Example) error {
		out = append(out, toTrainerExample(e))
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.datasets.put(key, out)
	return out, nil
}

// datasetCache holds the most recently loaded datasets of a worker, up to a
// budget in bytes of examples.
type datasetCache struct {
	maxBytes int64 // 0 means datasetCacheBytes

	mu      sync.Mutex
	entries []cachedDataset // most recent last
	bytes   int64
}

type cachedDataset struct {
	key      string
	examples []trainer.Example
	// featurized is the examples featurized for a job's state, once an
	// epoch has needed it, for the job's later epochs.
	featurized *trainer.Featurized
	bytes      int64
}

// datasetCacheBytes bounds the cache: a few jobs' training and validation
// files per worker. A dataset larger than that is parsed again for each
// epoch rather than held between epochs.
const datasetCacheBytes = 1 << 30

func (c *datasetCache) get(key string) ([]trainer.Example, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := c.index(key)
	if i < 0 {
		return nil, false
	}
	e := c.entries[i]
	c.entries = append(slices.Delete(c.entries, i, i+1), e)
	return e.examples, true
}

func (c *datasetCache) put(key string, examples []trainer.Example) {
	limit := c.limit()
	size := examplesBytes(examples)
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := c.index(key); i >= 0 {
		c.bytes -= c.entries[i].bytes
		c.entries = slices.Delete(c.entries, i, i+1)
	}
	if size > limit {
		return
	}
	c.entries = append(c.entries, cachedDataset{key: key, examples: examples, bytes: size})
	c.bytes += size
	c.evict()
}

// evict drops the least recently used entries while the cache is over its limit.
func (c *datasetCache) evict() {
	for c.bytes > c.limit() {
		c.bytes -= c.entries[0].bytes
		// Delete clears the vacated slot, so the evicted examples can be freed.
		c.entries = slices.Delete(c.entries, 0, 1)
	}
}

// featurize returns key's examples featurized for s: those kept beside
// them when they were featurized for s, else featurized now and kept while
// the examples are.
func (c *datasetCache) featurize(key string, s *trainer.State, examples []trainer.Example) *trainer.Featurized {
	c.mu.Lock()
	if i := c.index(key); i >= 0 && c.entries[i].featurized != nil && c.entries[i].featurized.For(s) {
		f := c.entries[i].featurized
		c.mu.Unlock()
		return f
	}
	c.mu.Unlock()
	f := trainer.Featurize(s, examples)
	c.mu.Lock()
	defer c.mu.Unlock()
	i := c.index(key)
	if i < 0 {
		return f
	}
	e := c.entries[i]
	if e.featurized != nil {
		e.bytes -= e.featurized.Bytes()
		c.bytes -= e.featurized.Bytes()
		e.featurized = nil
	}
	if e.bytes+f.Bytes() <= c.limit() {
		e.featurized = f
		e.bytes += f.Bytes()
		c.bytes += f.Bytes()
	}
	// The entry just used goes last, so eviction takes others first.
	c.entries = append(slices.Delete(c.entries, i, i+1), e)
	c.evict()
	return f
}

func (c *datasetCache) limit() int64 {
	if c.maxBytes == 0 {
		return datasetCacheBytes
	}
	return c.maxBytes
}

func (c *datasetCache) index(key string) int {
	return slices.IndexFunc(c.entries, func(e cachedDataset) bool { return e.key == key })
}

// examplesBytes approximates the memory examples take: the slice and the
// text of each example.
func examplesBytes(examples []trainer.Example) int64 {
	n := int64(cap(examples)) * int64(unsafe.Sizeof(trainer.Example{}))
	for _, e := range examples {
		n += int64(len(e.Text) + len(e.Label))
	}
	return n
}

func toTrainerExample(e dataset.Example) trainer.Example {
	return trainer.Example{Text: e.Input(), Label: e.Target(), Tokens: e.Tokens()}
}
