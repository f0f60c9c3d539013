-- metrics_merge: merge one batch of buffered metric aggregates into time-bucket hashes, at
-- most once per (writer, sequence number). Every key belongs to one metric name and shares
-- its hash tag {<name>}.
--
-- KEYS[1]   the writer's sequence key (string: the last sequence number it applied)
-- KEYS[2]   the metric's tag-set index (zset: canonical tag set -> latest bucket start)
-- KEYS[3..] one bucket hash per entry of ARGV[4..], in the same order
-- ARGV[1]   this batch's sequence number (increasing per writer)
-- ARGV[2]   TTL in milliseconds set on every key written (retention + one bucket)
-- ARGV[3]   index horizon in seconds: tag sets whose latest bucket is older than
--           server time minus this are removed from the index
-- ARGV[4..] per bucket hash: member, bucket start, count, sum, min, max, n, then n pairs
--           (histogram field, count). member is the canonical tag set to index, or ""
--           for the all-tag-sets rollup (not indexed).
--
-- Bucket hash fields: count (integer), sum (HINCRBYFLOAT), min and max (kept as the text
-- given, compared as numbers), and one integer field per occupied histogram bucket.
-- Returns 1 when applied, 0 when this sequence number was already applied (a resend).
-- idempotent: true
local last = redis.call("GET", KEYS[1])
local seq = tonumber(ARGV[1])
if last and tonumber(last) >= seq then
  return 0
end
local ttl = ARGV[2]
local a = 4
for i = 3, #KEYS do
  local key = KEYS[i]
  local member, bucket = ARGV[a], ARGV[a + 1]
  local lo, hi = ARGV[a + 4], ARGV[a + 5]
  local n = tonumber(ARGV[a + 6])
  redis.call("HINCRBY", key, "count", ARGV[a + 2])
  redis.call("HINCRBYFLOAT", key, "sum", ARGV[a + 3])
  local cur = redis.call("HMGET", key, "min", "max")
  if not cur[1] or tonumber(lo) < tonumber(cur[1]) then
    redis.call("HSET", key, "min", lo)
  end
  if not cur[2] or tonumber(hi) > tonumber(cur[2]) then
    redis.call("HSET", key, "max", hi)
  end
  local f = a + 7
  for _ = 1, n do
    redis.call("HINCRBY", key, ARGV[f], ARGV[f + 1])
    f = f + 2
  end
  redis.call("PEXPIRE", key, ttl)
  if member ~= "" then
    redis.call("ZADD", KEYS[2], "GT", bucket, member)
  end
  a = f
end
local now = tonumber(redis.call("TIME")[1])
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", "(" .. (now - tonumber(ARGV[3])))
redis.call("PEXPIRE", KEYS[2], ttl)
redis.call("SET", KEYS[1], seq, "PX", ttl)
return 1
