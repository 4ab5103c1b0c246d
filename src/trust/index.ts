/**
 * Trust: cross-signing of our own account, secret storage and recovery, other users' identities.
 *
 * @module
 */
export * from './cross-signing';
export * from './secret-storage';
export * from './recovery';
export * from './verification';
