-- agent_transition: one agent's lifecycle transition, whole or not at all. Included (after
-- agent_event) by agent_transition and agent_transition_many with
-- "--@include agent_transition".
--   P          the shard prefix
--   key        the agent hash (<P>agent:<id>)
--   id         the agent id
--   to         the target state
--   sources    the states the target may be reached from, as ",a,b,c,"
--   expected   expected version, "" for any
--   reason     reason ("" for none)
--   now        server time in ms
--   audit_max  audit trail max length
-- Checks the current state and version; writes the new state and bumps the version; moves
-- the agent between its shard's per-state indexes (and drops its lease when terminated);
-- appends a "state_changed" event to the shard stream and the audit trail.
-- Returns from, new version, event id; or nil and the error text ("NOTFOUND <id>",
-- "CONFLICT <id> <stored version> <expected>", "INVALID <id> <from> <to>"), having written
-- nothing.
local function transition_agent(P, key, id, to, sources, expected, reason, now, audit_max)
  local current = redis.call("HMGET", key, "state", "version", "type")
  local from, version, kind = current[1], tonumber(current[2]), current[3]
  if not from then
    return nil, "NOTFOUND " .. id
  end
  if expected ~= "" and version ~= tonumber(expected) then
    return nil, "CONFLICT " .. id .. " " .. version .. " " .. expected
  end
  if not string.find(sources, "," .. from .. ",", 1, true) then
    return nil, "INVALID " .. id .. " " .. from .. " " .. to
  end
  version = version + 1
  redis.call("HSET", key, "state", to, "version", version, "updated", now)
  redis.call("ZREM", P .. "idx:st:" .. from, id)
  redis.call("ZREM", P .. "idx:st:" .. from .. ":" .. kind, id)
  redis.call("ZADD", P .. "idx:st:" .. to, 0, id)
  redis.call("ZADD", P .. "idx:st:" .. to .. ":" .. kind, 0, id)
  if to == "terminated" then
    redis.call("ZREM", P .. "leases", id)
  end
  local data
  if reason == "" then  -- states are of [a-z]: nothing to escape
    data = '{"from":"' .. from .. '","to":"' .. to .. '","version":' .. version .. '}'
  else
    data = cjson.encode({from = from, to = to, version = version, reason = reason})
  end
  local event = append_agent_event(P, id, "state_changed", data, now, audit_max)
  return from, version, event
end
