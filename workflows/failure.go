package workflows

import (
	"errors"
	"fmt"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/failure"
)

// cause is what one error type means for the job: its code and class.
type cause struct {
	errType string
	failure.Cause
}

// causes classifies the failures a job can end with, by the error type its
// activity or the workflow raised. A slice, not a map: the retry policy's
// list of types is built from it in a fixed order.
var causes = []cause{
	{activities.ErrTypeInvalidData, failure.Cause{Code: "invalid_data", Class: failure.Data}},
	{activities.ErrTypeInvalidConfig, failure.Cause{Code: "invalid_config", Class: failure.Config}},
	{activities.ErrTypeOutOfMemory, failure.Cause{Code: "out_of_memory", Class: failure.OOM}},
	{activities.ErrTypeWorldOutOfMemory, failure.Cause{Code: "out_of_memory", Class: failure.OOM}},
	{activities.ErrTypeHang, failure.Cause{Code: "trainer_hung", Class: failure.Hang}},
	{failure.TypeWorkerLost, workerLost},
	{activities.ErrTypeWorkerStopping, failure.Cause{Code: "worker_stopped", Class: failure.WorkerLost}},
	{failure.TypeBudget, failure.Cause{Code: "budget_exceeded", Class: failure.Budget}},
	{activities.ErrTypeTrainerCrashed, failure.Cause{Code: "trainer_crashed", Class: failure.Internal}},
	{activities.ErrTypeTrainerProtocol, failure.Cause{Code: "trainer_protocol", Class: failure.Internal}},
	{activities.ErrTypeCheckpointUnreadable, failure.Cause{Code: "checkpoint_unreadable", Class: failure.Internal}},
}

// workerLost is a worker that died or went away mid-epoch.
var workerLost = failure.Cause{Code: "worker_lost", Class: failure.WorkerLost}

// internalCause is a failure of no known type.
var internalCause = failure.Cause{Code: "internal_error", Class: failure.Internal}

// nonRetryableTypes are the error types of the classes that are never
// retried (failure.Class.Retried): an epoch's retry policy lists them, so a
// failure of such a class ends its epoch whatever its raiser said.
func nonRetryableTypes() []string {
	var types []string
	for _, c := range causes {
		if !c.Class.Retried() {
			types = append(types, c.errType)
		}
	}
	return types
}

// causeOf finds the cause of err: the first error in its chain whose type
// is known. A heartbeat timeout is a lost worker.
func causeOf(err error) failure.Cause {
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch e := e.(type) {
		case *temporal.ApplicationError:
			for _, c := range causes {
				if c.errType == e.Type() {
					return c.Cause
				}
			}
		case *temporal.TimeoutError:
			if e.TimeoutType() == enumspb.TIMEOUT_TYPE_HEARTBEAT {
				return workerLost
			}
		}
	}
	return internalCause
}

// classify turns the error a run ended with into the job's failure.
func classify(err error) failure.Failure {
	return failure.New(causeOf(err), userMessage(err))
}

// isApplicationError says whether err is, or wraps, an application error
// of type errType.
func isApplicationError(err error, errType string) bool {
	var appErr *temporal.ApplicationError
	return errors.As(err, &appErr) && appErr.Type() == errType
}

// failureType is the type a request's failure answers with: err's
// application error type where it is one of types (a refusal the caller
// can act on), else ErrTypeUnavailable (it may pass).
func failureType(err error, types ...string) string {
	for _, t := range types {
		if isApplicationError(err, t) {
			return t
		}
	}
	return activities.ErrTypeUnavailable
}

// epochFailure says so when an epoch failed because it used up its
// attempts: the job's error then names the epoch and the count, and ends
// with the last attempt's failure, whose class it keeps.
func epochFailure(epoch int, err error) error {
	var actErr *temporal.ActivityError
	if !errors.As(err, &actErr) {
		return err
	}
	exhausted := actErr.RetryState() == enumspb.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED
	if !exhausted && actErr.RetryState() != enumspb.RETRY_STATE_NON_RETRYABLE_FAILURE {
		// A retryable failure that still ended the activity, which has no
		// schedule-to-close timeout, used its attempts up (the SDK's test
		// environment leaves the retry state unspecified).
		var appErr *temporal.ApplicationError
		exhausted = errors.As(err, &appErr) && !appErr.NonRetryable()
	}
	if !exhausted {
		return err
	}
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("epoch %d failed %d times, the last time with: %s", epoch, EpochAttempts, userMessage(err)), ErrTypeEpochAttempts, err)
}
