-- Retry one task, or dead-letter it once its attempts are used up (after dead_letter.lua).
-- KEYS: processing, queue, stats, attempts, dead, givebacks. ARGV: id, max attempts, stage, reason, at,
-- worker. Returns 0 not held, 1 retried, 2 dead-lettered.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local attempts = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0') or 0
if attempts >= tonumber(ARGV[2]) then
  dead_letter()
  return 2
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'retried', 1)
return 1
