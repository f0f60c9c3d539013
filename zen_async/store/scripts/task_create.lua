-- task_create: store a new pending task and queue it for its agent type, in one atomic step.
--
-- KEYS[1]  the task hash (<P>task:<id>); every other key is <P>... in the same hash tag
-- ARGV[1]  P, the agent type's prefix
-- ARGV[2]  task id
-- ARGV[3]  agent type
-- ARGV[4]  operation id: a resend with the same id (a reply lost after the send) succeeds
--          again without writing twice
-- ARGV[5]  priority (an integer; higher is claimed first)
-- ARGV[6]  timeout in ms, counted from the claim
-- ARGV[7]  the request, codec-encoded
--
-- Queue member: "<16-digit sequence>:<id>" with score -priority, so ZPOPMIN takes the highest
-- priority first and, within a priority, the lowest sequence (FIFO).
-- Returns {created_ms, creation_sequence}. Errors: "CONFLICT <id>": the id is taken.
-- idempotent: true
local P, id = ARGV[1], ARGV[2]
local seen = redis.call("HMGET", KEYS[1], "op", "created", "cseq")
if seen[1] then
  if seen[1] == ARGV[4] then
    return {tonumber(seen[2]), tonumber(seen[3])}
  end
  return redis.error_reply("CONFLICT " .. id)
end
local seq = redis.call("INCR", P .. "seq")
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call("HSET", KEYS[1], "id", id, "type", ARGV[3], "status", "pending", "req", ARGV[7],
  "prio", ARGV[5], "tmo", ARGV[6], "att", 0, "ver", 1, "created", now, "updated", now,
  "cseq", seq, "qseq", seq, "op", ARGV[4])
redis.call("ZADD", P .. "queue", -tonumber(ARGV[5]), string.format("%016d", seq) .. ":" .. id)
redis.call("ZADD", P .. "idx:all", seq, id)
redis.call("ZADD", P .. "idx:pending", seq, id)
return {now, seq}
