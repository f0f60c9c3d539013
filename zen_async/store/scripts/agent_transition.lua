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
--
-- Returns {from_state, new_version, event_id}. Errors: "NOTFOUND <id>",
-- "CONFLICT <id> <stored version> <expected>", "INVALID <id> <from> <to>".
--@include agent_event
--@include agent_transition
local id, to = ARGV[2], ARGV[3]
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local from, version, event = transition_agent(ARGV[1], KEYS[1], id, to, ARGV[4], ARGV[5],
  ARGV[6], now, ARGV[7])
if not from then
  return redis.error_reply(version)
end
publish_hints(ARGV[8], {state_hint(ARGV[9], event, "state_changed", id, to, version)})
return {from, version, event}
