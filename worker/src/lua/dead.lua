-- Dead-letter one task (after dead_letter.lua).
-- KEYS: processing, queue, stats, attempts, dead, givebacks. ARGV: id, unused, stage, reason, at, worker.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
dead_letter()
return 1
