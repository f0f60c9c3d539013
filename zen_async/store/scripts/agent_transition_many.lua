-- agent_transition_many: lifecycle transitions of agents of one shard, each one atomic on
-- its own exactly as agent_transition (a refused one writes nothing and the others still
-- happen); one pub/sub message carries the hints of all that happened.
--
-- KEYS[i]  the hash of agent i (<P>agent:<id>); every other key is <P>... in the same tag
-- ARGV[1]  P, the shard prefix
-- ARGV[2]  reason ("" for none), the same for all
-- ARGV[3]  audit stream max length
-- ARGV[4]  pub/sub channel for the hints ("" for none)
-- ARGV[5]  the shard stream's logical name, for the hints
-- ARGV[6 + 4 * (i - 1) ...]  transition i: agent id, target state, the states the target
--          may be reached from (",a,b,c,"), expected version ("" for any)
--
-- Returns one entry per transition, in order: {from_state, new_version, event_id}, or the
-- error text "NOTFOUND <id>", "CONFLICT <id> <stored version> <expected>" or
-- "INVALID <id> <from> <to>" of a refused one.
--@include agent_event
--@include agent_transition
local P, reason, audit_max, stream = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out, hints = {}, {}
for i, key in ipairs(KEYS) do
  local a = 6 + 4 * (i - 1)
  local id, to = ARGV[a], ARGV[a + 1]
  local from, version, event = transition_agent(P, key, id, to, ARGV[a + 2], ARGV[a + 3],
    reason, now, audit_max)
  if from then
    out[i] = {from, version, event}
    hints[#hints + 1] = state_hint(stream, event, "state_changed", id, to, version)
  else
    out[i] = version
  end
end
publish_hints(ARGV[4], hints)
return out
