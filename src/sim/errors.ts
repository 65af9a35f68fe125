/** A mistake in what the user asked the simulator for: the command line reports it in one line and exits 2. */
export class SimInputError extends Error {
  override name = 'SimInputError';
}
