-- agent_create: store a new agent in state "initializing", index it, start its liveness
-- lease, and record an "agent_created" event in its shard stream and audit trail.
--
-- KEYS[1]  the agent hash (<P>agent:<id>); every other key is <P>... in the same hash tag
-- ARGV[1]  P, the shard prefix, e.g. "zen:t:default:{z3}:"
-- ARGV[2]  agent id
-- ARGV[3]  agent type
-- ARGV[4]  the record's JSON document (capabilities, metadata, ...)
-- ARGV[5]  host ("" for none)
-- ARGV[6]  pid ("" for none)
-- ARGV[7]  lease TTL in ms
-- ARGV[8]  audit stream max length
-- ARGV[9]  pub/sub channel for the hint ("" for none)
-- ARGV[10] the shard stream's logical name, for the hint
--
-- Returns {version, created_ms, event_id}. Errors: "CONFLICT agent <id> already exists".
--@include agent_event
local P, id, kind = ARGV[1], ARGV[2], ARGV[3]
if redis.call("EXISTS", KEYS[1]) == 1 then
  return redis.error_reply("CONFLICT agent " .. id .. " already exists")
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call("HSET", KEYS[1], "type", kind, "state", "initializing", "version", 1,
  "created", now, "updated", now, "seen", now, "host", ARGV[5], "pid", ARGV[6], "doc", ARGV[4])
redis.call("ZADD", P .. "idx:all", 0, id)
redis.call("ZADD", P .. "idx:type:" .. kind, 0, id)
redis.call("ZADD", P .. "idx:st:initializing", 0, id)
redis.call("ZADD", P .. "idx:st:initializing:" .. kind, 0, id)
redis.call("ZADD", P .. "leases", now + tonumber(ARGV[7]), id)
local data = cjson.encode({to = "initializing", version = 1, agent_type = kind})
local event = emit_agent_event(P, id, "agent_created", data, now, ARGV[8], ARGV[9], ARGV[10],
  {to = "initializing", version = 1})
return {1, now, event}
