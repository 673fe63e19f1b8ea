export { ENV_NAME, MAX_ENV_BYTES, MAX_ENV_STRING, envObject, envProblem, isEnvLine } from './env.ts'
export { IDENTITY_FILE, loadIdentity, peerIdFromPublicKey, publicKeyFromPeerId, verifySignature } from './identity.ts'
export type { Identity } from './identity.ts'
export {
  DEFAULT_SCOPE, MAX_READ_SCOPES, MAX_RECORD_SIZE, RECORD_DOMAIN, RECORD_FORMAT, RECORD_PREFIX,
  checkEpoch, checkScope, claimedKey, signerOf, openRecord, recordKey, signRecord, signedBytes, verifyEnvelope
} from './record.ts'
export type { StepRecord } from './record.ts'
export { TrustPolicy, parseWriter, writerTrust } from './trust.ts'
export type { RecordPolicy } from './trust.ts'
export { ClaimInvalidError, IdentityError, RecordInvalidError, RecordsError, WriterKeyError } from './errors.ts'
export { generateWriterKey, isWriterBaseName, isWriterKeyName, loadWriterKey, parseWriterId, parseWriterKey, splitWriterKeyName } from './writer-key.ts'
export type { WriterKey } from './writer-key.ts'
export type { RecordRejectReason } from './errors.ts'
export {
  CLAIM_DOMAIN, CLAIM_FORMAT, CLAIM_ID_BYTES, MAX_CLAIM_SEQ, MAX_CLAIM_SIZE, MAX_LEASE_MS,
  claimIdHex, claimSignedBytes, claimSignerOf, compareClaimIds, openClaim, signClaim
} from './claim.ts'
export type { StepClaim } from './claim.ts'
