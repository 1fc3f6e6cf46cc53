package testenv

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
)

// Labels of the generated support-ticket dataset, with the words that
// signal each; the rest of each ticket is filler shared by all labels.
var ticketLabels = []struct {
	label    string
	keywords []string
}{
	{"billing", []string{"invoice", "charged", "payment", "bill", "subscription"}},
	{"refund", []string{"refund", "money back", "reimburse", "return"}},
	{"shipping", []string{"delivery", "package", "shipping", "tracking", "courier"}},
	{"account", []string{"password", "login", "username", "locked out", "email address"}},
	{"technical", []string{"error", "crash", "bug", "broken", "freezes"}},
}

var filler = strings.Fields("please help me with my order today thanks hello I need this is about the problem since yesterday urgent can you check it again")

// Tickets generates n chat-format lines of an intent-classification dataset.
func Tickets(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	var b strings.Builder
	for range n {
		l := ticketLabels[r.IntN(len(ticketLabels))]
		words := make([]string, 0, 8)
		for range 6 {
			words = append(words, filler[r.IntN(len(filler))])
		}
		words = append(words, l.keywords[r.IntN(len(l.keywords))])
		r.Shuffle(len(words), func(i, j int) { words[i], words[j] = words[j], words[i] })
		line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
			{"role": "system", "content": "Classify the support ticket."},
			{"role": "user", "content": strings.Join(words, " ")},
			{"role": "assistant", "content": l.label},
		}})
		b.Write(line)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// TicketQuestion is a fresh ticket of label, for asking a deployed model.
func TicketQuestion(label string, seed uint64) string {
	r := rand.New(rand.NewPCG(seed, 7))
	for _, l := range ticketLabels {
		if l.label == label {
			return fmt.Sprintf("%s %s %s", filler[r.IntN(len(filler))], l.keywords[r.IntN(len(l.keywords))], filler[r.IntN(len(filler))])
		}
	}
	return ""
}

// TicketLabels lists the generated labels.
func TicketLabels() []string {
	out := make([]string, len(ticketLabels))
	for i, l := range ticketLabels {
		out[i] = l.label
	}
	return out
}
