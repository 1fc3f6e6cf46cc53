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

// Chats generates n chat-format lines of an assistant dataset whose
// replies are free text, every one different from the others: what a
// language model is tuned on, and what the builtin trainer, a classifier
// of repeating replies, cannot learn.
func Chats(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 99))
	days := []string{"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}
	var b strings.Builder
	for i := range n {
		// Each reply names i's own figures, so no two are alike.
		var user, assistant string
		switch k := i + 1; r.IntN(4) {
		case 0:
			user = fmt.Sprintf("How many minutes are there in %d hours?", k)
			assistant = fmt.Sprintf("There are %d minutes in %d hours, since every hour has 60 minutes.", 60*k, k)
		case 1:
			user = fmt.Sprintf("Can you convert %d kilometres to miles for me?", 5*k)
			assistant = fmt.Sprintf("Sure: %d kilometres is about %.1f miles (a kilometre is roughly 0.621 miles).", 5*k, 0.621371*float64(5*k))
		case 2:
			user = fmt.Sprintf("Where is my order #%d? It has not arrived yet.", 4000+k)
			assistant = fmt.Sprintf("Sorry for the wait! Order #%d left our warehouse on %s and should reach you within %d business days.",
				4000+k, days[r.IntN(len(days))], 2+r.IntN(4))
		default:
			a := 2 + r.IntN(20)
			user = fmt.Sprintf("What is %d times %d?", a, k)
			assistant = fmt.Sprintf("%d times %d is %d.", a, k, a*k)
		}
		line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
			{"role": "system", "content": "You are a friendly, concise assistant."},
			{"role": "user", "content": user},
			{"role": "assistant", "content": assistant},
		}})
		b.Write(line)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}
