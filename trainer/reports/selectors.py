"""Reads of evaluation reports and their predictions, always on behalf of a user."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber
from django.http import Http404

from classifier_site.permissions import is_admin
from trainer.models import Evaluation, Prediction, TrainingJob


def evaluation_list(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Evaluation]:
    if not is_admin(user):
        return Evaluation.objects.none()
    return Evaluation.objects.select_related("model_version", "model_version__job", "dataset")


def evaluation_get(*, user: AbstractBaseUser | AnonymousUser, pk: int) -> Evaluation:
    try:
        return evaluation_list(user=user).get(pk=pk)
    except Evaluation.DoesNotExist:
        raise Http404("No such evaluation.") from None


def evaluation_of_job(*, user: AbstractBaseUser | AnonymousUser, job: TrainingJob) -> Evaluation | None:
    """The newest report of the job's model, if it has one."""
    return evaluation_list(user=user).filter(model_version__job=job).first()


def prediction_cell(*, evaluation: Evaluation, true_index: int, predicted_index: int) -> QuerySet[Prediction]:
    """The images behind one confusion-matrix cell, the most confident first."""
    return (
        evaluation.predictions.filter(true_index=true_index, predicted_index=predicted_index)
        .select_related("image", "image__label")
        .order_by("-confidence", "id")
    )


def prediction_mistakes(*, evaluation: Evaluation, limit: int = 24) -> list[Prediction]:
    """The most confident wrong answers: where the model, or the label, is most surely wrong."""
    wrong = evaluation.predictions.exclude(true_index=F("predicted_index"))
    return list(wrong.select_related("image", "image__label").order_by("-confidence", "id")[:limit])


def prediction_examples(*, evaluation: Evaluation, per_class: int = 4) -> dict[int, list[Prediction]]:
    """A few correct answers per class (the most confident), by class index."""
    rank = Window(RowNumber(), partition_by=[F("true_index")], order_by=[F("confidence").desc(), F("id").asc()])
    right = evaluation.predictions.filter(true_index=F("predicted_index")).select_related("image")
    examples: dict[int, list[Prediction]] = {index: [] for index in range(len(evaluation.classes))}
    for prediction in right.annotate(rank=rank).filter(rank__lte=per_class).order_by("true_index", "rank"):
        examples[prediction.true_index].append(prediction)
    return examples


def prediction_get(*, evaluation: Evaluation, pk: int) -> Prediction:
    try:
        return evaluation.predictions.select_related("image").get(pk=pk)
    except Prediction.DoesNotExist:
        raise Http404("No such prediction.") from None
