-- agent_create: store new agents of one shard in state "initializing", index them, start
-- their liveness leases, and record an "agent_created" event for each in the shard stream
-- and its audit trail; one pub/sub message carries the hints of all of them. Each agent is
-- created whole (hash, indexes, lease, events) or, when its id exists, not at all.
--
-- KEYS[i]  the hash of agent i (<P>agent:<id>); every other key is <P>... in the same tag
-- ARGV[1]  P, the shard prefix, e.g. "zen:t:default:{z3}:"
-- ARGV[2]  lease TTL in ms
-- ARGV[3]  audit stream max length
-- ARGV[4]  pub/sub channel for the hints ("" for none)
-- ARGV[5]  the shard stream's logical name, for the hints
-- ARGV[6 + 5 * (i - 1) ...]  agent i: id, type, JSON document (capabilities, metadata,
--          ...), host ("" for none), pid ("" for none)
--
-- Returns {created_ms, r_1, ..., r_n}: r_i the event id of agent i's creation, or 0 when an
-- agent with its id already existed (nothing of it was written).
--@include agent_event
local P = ARGV[1]
local audit_max, channel, stream = ARGV[3], ARGV[4], ARGV[5]
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local expiry = now + tonumber(ARGV[2])
local out, hints = {now}, {}
-- index members, added with one ZADD per index after the loop (the script is atomic: no
-- client sees an agent before its index entries)
local members, leases, by_kind = {}, {}, {}
for i, key in ipairs(KEYS) do
  local a = 6 + 5 * (i - 1)
  local id, kind = ARGV[a], ARGV[a + 1]
  if redis.call("EXISTS", key) == 1 then
    out[i + 1] = 0
  else
    redis.call("HSET", key, "type", kind, "state", "initializing", "version", 1,
      "created", now, "updated", now, "seen", now, "host", ARGV[a + 3], "pid", ARGV[a + 4],
      "doc", ARGV[a + 2])
    members[#members + 1] = 0
    members[#members + 1] = id
    leases[#leases + 1] = expiry
    leases[#leases + 1] = id
    local of_kind = by_kind[kind]
    if not of_kind then
      of_kind = {}
      by_kind[kind] = of_kind
    end
    of_kind[#of_kind + 1] = 0
    of_kind[#of_kind + 1] = id
    -- kind is of [a-z0-9_.-] (validated by the caller): nothing to escape
    local data = '{"to":"initializing","version":1,"agent_type":"' .. kind .. '"}'
    local event = append_agent_event(P, id, "agent_created", data, now, audit_max)
    hints[#hints + 1] = state_hint(stream, event, "agent_created", id, "initializing", 1)
    out[i + 1] = event
  end
end
if #members > 0 then
  redis.call("ZADD", P .. "idx:all", unpack(members))
  redis.call("ZADD", P .. "idx:st:initializing", unpack(members))
  redis.call("ZADD", P .. "leases", unpack(leases))
  for kind, of_kind in pairs(by_kind) do
    redis.call("ZADD", P .. "idx:type:" .. kind, unpack(of_kind))
    redis.call("ZADD", P .. "idx:st:initializing:" .. kind, unpack(of_kind))
  end
end
publish_hints(channel, hints)
return out
