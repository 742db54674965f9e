package kvstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the backend for more than one machine: every worker of every
// machine pointed at the same Redis (or Valkey) shares the tenants' keys.
// A key is stored under "wkv:" + len(ns) + ":" + ns + ":" + key (so no
// tenant's key can be named like another's); a tenant's usage, for its
// quota, under "wkvu:" + len(ns) + ":" + ns. Changes that check the quota
// are Lua scripts, atomic in Redis.
type Redis struct {
	c *redis.Client
}

// OpenRedis connects to the Redis of a redis:// (or rediss://) URL.
func OpenRedis(url string) (*Redis, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("kv redis %s: %w", url, err)
	}
	// Bounded waits: a Redis that is gone or stuck is an error within
	// seconds (the guest gets ErrUnavailable), not a stuck instance.
	o.MaxRetries = 1
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 2*time.Second, 2*time.Second, 2*time.Second
	return &Redis{c: redis.NewClient(o)}, nil
}

func (r *Redis) Close() error { return r.c.Close() }

func nsPrefix(ns string) string { return "wkv:" + strconv.Itoa(len(ns)) + ":" + ns + ":" }

func usageKey(ns string) string { return "wkvu:" + strconv.Itoa(len(ns)) + ":" + ns }

func (r *Redis) Get(ctx context.Context, ns string, key []byte) ([]byte, error) {
	v, err := r.c.Get(ctx, nsPrefix(ns)+string(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	return v, err
}

// setScript: KEYS key, usage; ARGV value, key length, quota. -1: over quota.
var setScript = redis.NewScript(`
local was = 0
if redis.call('EXISTS', KEYS[1]) == 1 then was = tonumber(ARGV[2]) + redis.call('STRLEN', KEYS[1]) end
local d = tonumber(ARGV[2]) + string.len(ARGV[1]) - was
local quota = tonumber(ARGV[3])
if d > 0 and quota > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + d > quota then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
if d ~= 0 then redis.call('INCRBY', KEYS[2], d) end
return 0`)

func (r *Redis) Set(ctx context.Context, ns string, key, value []byte, quota int64) error {
	n, err := setScript.Run(ctx, r.c, []string{nsPrefix(ns) + string(key), usageKey(ns)}, value, len(key), quota).Int()
	if err != nil {
		return err
	}
	if n < 0 {
		return ErrQuota
	}
	return nil
}

// delScript: KEYS key, usage; ARGV key length.
var delScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local was = tonumber(ARGV[1]) + redis.call('STRLEN', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('DECRBY', KEYS[2], was)
return 0`)

func (r *Redis) Delete(ctx context.Context, ns string, key []byte) error {
	return delScript.Run(ctx, r.c, []string{nsPrefix(ns) + string(key), usageKey(ns)}, len(key)).Err()
}

// addScript: KEYS key, usage; ARGV delta, key length, quota. Returns
// {0, sum}, {-1} over quota, {-2} not an integer or an overflow (INCRBY's
// own checks).
var addScript = redis.NewScript(`
local old = redis.call('GET', KEYS[1])
local was = 0
if old then was = tonumber(ARGV[2]) + string.len(old) end
local ok, sum = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if not ok then return {-2} end
local d = tonumber(ARGV[2]) + redis.call('STRLEN', KEYS[1]) - was
local quota = tonumber(ARGV[3])
if d > 0 and quota > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + d > quota then
  if old then redis.call('SET', KEYS[1], old) else redis.call('DEL', KEYS[1]) end
  return {-1}
end
if d ~= 0 then redis.call('INCRBY', KEYS[2], d) end
return {0, tostring(sum)}`)

func (r *Redis) Add(ctx context.Context, ns string, key []byte, delta int64, quota int64) (int64, error) {
	res, err := addScript.Run(ctx, r.c, []string{nsPrefix(ns) + string(key), usageKey(ns)}, delta, len(key), quota).Slice()
	if err != nil {
		return 0, err
	}
	if len(res) == 0 {
		return 0, errors.New("kv redis: empty answer to add")
	}
	switch code, _ := res[0].(int64); code {
	case -1:
		return 0, ErrQuota
	case -2:
		return 0, ErrNotInteger
	}
	if len(res) < 2 {
		return 0, errors.New("kv redis: no sum in the answer to add")
	}
	s, _ := res[1].(string)
	return strconv.ParseInt(s, 10, 64)
}

// globEscape quotes the characters SCAN's MATCH treats as a pattern.
func globEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c == '*' || c == '?' || c == '[' || c == ']' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

func (r *Redis) List(ctx context.Context, ns string, prefix []byte, limit int) ([][]byte, error) {
	p := nsPrefix(ns)
	var keys [][]byte
	iter := r.c.Scan(ctx, 0, globEscape(p+string(prefix))+"*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, []byte(strings.TrimPrefix(iter.Val(), p)))
	}
	if err := iter.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(keys, bytes.Compare)
	if len(keys) > limit {
		keys = keys[:limit]
	}
	return keys, nil
}
