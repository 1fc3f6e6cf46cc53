// Package apikey makes and checks API keys. A key is "tf_" followed by 32
// random bytes in base32; only its SHA-256 is stored, which is safe for keys
// of that entropy and lets a lookup be one indexed query.
package apikey

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tuneforge/tuneforge/db"
)

// Scopes an API key can carry.
const (
	ScopeRead  = "fine-tuning:read"
	ScopeWrite = "fine-tuning:write"
)

// AllScopes lists every scope, for validation and the dev key.
var AllScopes = []string{ScopeRead, ScopeWrite}

// ErrInvalid is returned for a key that is malformed, unknown or revoked.
var ErrInvalid = errors.New("invalid API key")

const prefix = "tf_"

var encoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Key is what a valid key identifies.
type Key struct {
	ID             string
	OrganizationID string
	UserID         string
	Scopes         []string
}

// HasScope reports whether the key carries scope.
func (k Key) HasScope(scope string) bool { return slices.Contains(k.Scopes, scope) }

// Create makes a key for org and user with scopes, stores its hash and
// returns the plaintext, which is never stored.
func Create(ctx context.Context, store *db.Store, org, user string, scopes []string) (string, error) {
	if org == "" || user == "" {
		return "", errors.New("an API key needs an organization and a user")
	}
	for _, s := range scopes {
		if !slices.Contains(AllScopes, s) {
			return "", fmt.Errorf("unknown scope %q (known: %s)", s, strings.Join(AllScopes, ", "))
		}
	}
	if len(scopes) == 0 {
		return "", fmt.Errorf("an API key needs at least one scope (%s)", strings.Join(AllScopes, ", "))
	}
	secret, idBytes := make([]byte, 32), make([]byte, 10)
	if _, err := rand.Read(secret); err != nil {
		return "", err
	}
	if _, err := rand.Read(idBytes); err != nil {
		return "", err
	}
	plaintext := prefix + strings.ToLower(encoding.EncodeToString(secret))
	// The record's ID shares nothing with the secret.
	id := "key_" + strings.ToLower(encoding.EncodeToString(idBytes))
	err := store.CreateAPIKey(ctx, db.APIKey{ID: id, Hash: hash(plaintext), OrganizationID: org, UserID: user, Scopes: scopes})
	if err != nil {
		return "", err
	}
	return plaintext, nil
}

// Lookup returns the key record for plaintext, or ErrInvalid.
func Lookup(ctx context.Context, store *db.Store, plaintext string) (Key, error) {
	if !strings.HasPrefix(plaintext, prefix) || len(plaintext) > 128 {
		return Key{}, ErrInvalid
	}
	rec, err := store.APIKey(ctx, hash(plaintext))
	if err != nil {
		if db.IsNotFound(err) {
			return Key{}, ErrInvalid
		}
		return Key{}, err
	}
	return Key{ID: rec.ID, OrganizationID: rec.OrganizationID, UserID: rec.UserID, Scopes: rec.Scopes}, nil
}

func hash(plaintext string) []byte {
	sum := sha256.Sum256([]byte(plaintext))
	return sum[:]
}
