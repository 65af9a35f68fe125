/** The command's usage and options, apart from the simulator so that the CLI can show them without loading it. */
export const SIMULATE_USAGE = 'icaas simulate (--trace SPEC | --replay FOLDER) [--preset local|ec2] [--policy NAME | --compare A,B] [options]';

export const SIMULATE_HELP = `Options:
  --trace SPEC            arrivals: burst:N, poisson:RATE:SECONDS, sync:CLIENTS[:TOTAL], csv:FILE (seconds, one per line)
  --replay FOLDER         re-run a service's data folder: arrivals, start-up and service times and
                          settings from FOLDER/events.jsonl; reports simulated against real completion
  --preset local|ec2      defaults for the rest (default: local, or the replayed run's compute)
  --startup DIST          start-up time per instance, ms: const:X, uniform:A:B, normal:MEAN:SD,
                          lognormal:MEAN:SD, empirical:FILE (one sample per line)
  --service DIST          time per image on one core, ms (same forms)
  --max N                 most instances at once, counting those starting (local, ec2: 20)
  --capacity N            instances that can usefully run at once: the cores they share (local: 2, ec2: --max)
  --start-cost MS         CPU one start takes from the running instances (local: 600, ec2: 0)
  --policy NAME           drain-time (or default), queue-match (default: drain-time)
  --compare A,B           run each policy on the same trace and draws, side by side
  --idle-wait S           seconds an idle instance waits for work before it stops (default 5)
  --launch-interval MS    milliseconds between launch-controller ticks (default 500)
  --seed N                seed of the random draws; the same seed gives the same result (default 1)
  --svg FILE              write a chart of instances and queue depth over time
  --json                  print the results as JSON instead of a table`;
