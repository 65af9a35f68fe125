/**
 * The pieces of a CloudFormation template, typed: values and intrinsic functions, the
 * resource types this project declares (only the properties it sets), parameters,
 * conditions and outputs. template.ts builds the deployment's stack from these; the
 * result is a plain object, serialised as JSON for the CloudFormation API.
 */

export type Intrinsic =
  | { Ref: string }
  | { 'Fn::GetAtt': [string, string] }
  | { 'Fn::Join': [string, Value[]] }
  | { 'Fn::Base64': Value };
/** A string, or something CloudFormation turns into one. */
export type Value = string | Intrinsic;

export type Condition = { 'Fn::Equals': [Value, Value] } | { 'Fn::Not': [Condition] } | { 'Fn::And': Condition[] } | { Condition: string };

export const ref = (logicalId: string): Intrinsic => ({ Ref: logicalId });
export const getAtt = (logicalId: string, attribute: string): Intrinsic => ({ 'Fn::GetAtt': [logicalId, attribute] });

/** The parts concatenated: a plain string when every part is one, else Fn::Join. */
export function join(...parts: Value[]): Value {
  if (parts.every((part): part is string => typeof part === 'string')) return parts.join('');
  return { 'Fn::Join': ['', parts] };
}

export interface Tag {
  Key: string;
  Value: string;
}

export interface PolicyStatement {
  Sid?: string;
  Effect: 'Allow' | 'Deny';
  Principal?: Record<string, string> | '*';
  Action: string[];
  /** Absent only in a trust policy, whose subject is the role itself. */
  Resource?: Value[];
  Condition?: Record<string, Record<string, string>>;
}

export interface PolicyDocument {
  Version: '2012-10-17';
  Statement: PolicyStatement[];
}

interface BucketProperties {
  BucketName: string;
  BucketEncryption: { ServerSideEncryptionConfiguration: { ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' | 'aws:kms' } }[] };
  PublicAccessBlockConfiguration: { BlockPublicAcls: boolean; IgnorePublicAcls: boolean; BlockPublicPolicy: boolean; RestrictPublicBuckets: boolean };
  OwnershipControls: { Rules: { ObjectOwnership: 'BucketOwnerEnforced' }[] };
  LifecycleConfiguration: { Rules: { Id: string; Status: 'Enabled'; AbortIncompleteMultipartUpload: { DaysAfterInitiation: number } }[] };
  Tags: Tag[];
}

interface BucketPolicyProperties {
  Bucket: Value;
  PolicyDocument: PolicyDocument;
}

interface QueueProperties {
  QueueName: string;
  VisibilityTimeout: number;
  ReceiveMessageWaitTimeSeconds: number;
  MessageRetentionPeriod: number;
  SqsManagedSseEnabled: boolean;
  Tags: Tag[];
}

interface RoleProperties {
  RoleName: string;
  Description: string;
  AssumeRolePolicyDocument: PolicyDocument;
  Policies: { PolicyName: string; PolicyDocument: PolicyDocument }[];
  Tags: Tag[];
}

interface InstanceProfileProperties {
  InstanceProfileName: string;
  Roles: Value[];
}

interface LaunchTemplateProperties {
  LaunchTemplateName: string;
  VersionDescription: string;
  LaunchTemplateData: {
    ImageId: Value;
    InstanceType: Value;
    IamInstanceProfile: { Name: Value };
    UserData: Value;
    InstanceInitiatedShutdownBehavior: 'terminate';
    MetadataOptions: { HttpTokens: 'required'; HttpEndpoint: 'enabled' };
    TagSpecifications: { ResourceType: 'instance' | 'volume'; Tags: Tag[] }[];
  };
  TagSpecifications: { ResourceType: 'launch-template'; Tags: Tag[] }[];
}

export interface ResourceProperties {
  'AWS::S3::Bucket': BucketProperties;
  'AWS::S3::BucketPolicy': BucketPolicyProperties;
  'AWS::SQS::Queue': QueueProperties;
  'AWS::IAM::Role': RoleProperties;
  'AWS::IAM::InstanceProfile': InstanceProfileProperties;
  'AWS::EC2::LaunchTemplate': LaunchTemplateProperties;
}
export type ResourceType = keyof ResourceProperties;

export type DeletionPolicy = 'Delete' | 'Retain';

export interface Resource<T extends ResourceType = ResourceType> {
  Type: T;
  Properties: ResourceProperties[T];
  /** Declared on every resource, so what teardown and a replacement do is never a default. */
  DeletionPolicy: DeletionPolicy;
  UpdateReplacePolicy: DeletionPolicy;
  Condition?: string;
}

export interface Parameter {
  Type: 'String';
  Description: string;
  Default: string;
  AllowedValues?: string[];
  AllowedPattern?: string;
}

export interface Output {
  Description: string;
  Value: Value;
  Condition?: string;
}

export interface Template {
  AWSTemplateFormatVersion: '2010-09-09';
  Description: string;
  Parameters: Record<string, Parameter>;
  Conditions: Record<string, Condition>;
  Resources: Record<string, Resource>;
  Outputs: Record<string, Output>;
}

export function resource<T extends ResourceType>(
  type: T,
  properties: ResourceProperties[T],
  policies: { deletion: DeletionPolicy; updateReplace?: DeletionPolicy; condition?: string },
): Resource<T> {
  return {
    Type: type,
    Properties: properties,
    DeletionPolicy: policies.deletion,
    UpdateReplacePolicy: policies.updateReplace ?? policies.deletion,
    ...(policies.condition ? { Condition: policies.condition } : {}),
  };
}

/** The resources of one type, by logical id. */
export function resourcesOfType<T extends ResourceType>(template: Template, type: T): [string, Resource<T>][] {
  return Object.entries(template.Resources).filter((entry): entry is [string, Resource<T>] => entry[1].Type === type);
}
