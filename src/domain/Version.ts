/** The release version, stamped into the bundle at build time. */
export const version: string = process.env.MICROAGENT_BUILD_VERSION ?? "0.0.0+local"
