-- agent_transition: move an agent to a new lifecycle state in one atomic step: check the
-- current state and version, write the state and bump the version, move the agent between
-- its shard's per-state indexes, and append a "state_changed" event to the shard stream and
-- the agent's audit trail (then send a pub/sub hint). All of it happens or none of it does.
--
-- KEYS[1]  the agent hash (<P>agent:<id>); every other key is <P>... in the same hash tag
-- ARGV[1]  P, the shard prefix
-- ARGV[2]  agent id
-- ARGV[3]  the target state
-- ARGV[4]  the states the target may be reached from, as ",a,b,c,"
-- ARGV[5]  expected version, "" for any
-- ARGV[6]  reason ("" for none)
-- ARGV[7]  audit stream max length
-- ARGV[8]  pub/sub channel for the hint ("" for none)
-- ARGV[9]  the shard stream's logical name, for the hint
-- KEYS[2]  the operation's marker (<P>op:<op id>, same hash tag); optional (none: no marker,
--          as benchmarks/op_ids.py measures the marker's cost against)
-- ARGV[10] how long the marker is kept, in ms
--
-- Exactly once per operation id: the marker records the reply in the same atomic step, and
-- a call whose marker exists applies nothing and returns the first call's reply.
-- Returns {from_state, new_version, event_id}. Errors: "NOTFOUND <id>",
-- "CONFLICT <id> <stored version> <expected>", "INVALID <id> <from> <to>"; an error records
-- no marker (nothing was applied).
-- idempotent: true
--@include agent_event
--@include agent_transition
local marker = KEYS[2]
if marker then
  local seen = redis.call("GET", marker)
  if seen then
    return cjson.decode(seen)
  end
end
local id, to = ARGV[2], ARGV[3]
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local from, version, event = transition_agent(ARGV[1], KEYS[1], id, to, ARGV[4], ARGV[5],
  ARGV[6], now, ARGV[7])
if not from then
  return redis.error_reply(version)
end
if marker then
  redis.call("SET", marker, cjson.encode({from, version, event}), "PX", ARGV[10])
end
publish_hints(ARGV[8], {state_hint(ARGV[9], event, "state_changed", id, to, version)})
return {from, version, event}
