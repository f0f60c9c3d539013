-- agent_event: append an event about an agent to its shard stream and, with the same entry
-- id, to its audit trail (approximately capped), and send pub/sub hints. Included by the
-- agent_* scripts with "--@include agent_event".
--   P          the shard prefix ("zen:t:<tenant>:{z<n>}:")
--   id         the agent id
--   etype      the event type
--   data       the payload, already JSON
--   now        server time in ms
--   audit_max  audit trail max length
--   channel    hint channel ("" for none)
--   stream     the shard stream's logical name, for the hint
--   hint       extra hint fields (a table), e.g. {to = "ready", version = 3}
local function append_agent_event(P, id, etype, data, now, audit_max)
  local event = redis.call("XADD", P .. "events", "*", "time", now, "type", etype,
    "agent", id, "v", "1", "data", data)
  redis.call("XADD", P .. "audit:" .. id, "MAXLEN", "~", audit_max, event, "time", now,
    "type", etype, "agent", id, "v", "1", "data", data)
  return event
end

local function emit_agent_event(P, id, etype, data, now, audit_max, channel, stream, hint)
  local event = append_agent_event(P, id, etype, data, now, audit_max)
  if channel ~= "" then
    hint["stream"] = stream
    hint["id"] = event
    hint["type"] = etype
    hint["agent"] = id
    redis.call("PUBLISH", channel, cjson.encode(hint))
  end
  return event
end

-- The hint of a lifecycle event, as JSON built by hand (cheaper than cjson in a loop): agent
-- ids, states, stream names and entry ids are all of [A-Za-z0-9_.:-], nothing to escape.
local function state_hint(stream, event, etype, id, to, version)
  return '{"stream":"' .. stream .. '","id":"' .. event .. '","type":"' .. etype ..
    '","agent":"' .. id .. '","to":"' .. to .. '","version":' .. version .. '}'
end

-- Publish the hints of one script call: one hint as it is, several as one JSON array (one
-- message instead of one per agent for the bulk operations).
local function publish_hints(channel, hints)
  if channel == "" or #hints == 0 then
    return
  end
  if #hints == 1 then
    redis.call("PUBLISH", channel, hints[1])
  else
    redis.call("PUBLISH", channel, "[" .. table.concat(hints, ",") .. "]")
  end
end
